"""The role processes (`ops run ROLE --account TIER`): `runtime` boots one and hands it a
`RoleContext`; `stream`, `dispatcher`, `position_manager` and `signal_engine` each expose
`build(ctx)` returning the role's services (see `runtime.ROLES`)."""
