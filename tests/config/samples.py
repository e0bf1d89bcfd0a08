"""A minimal valid one-account config the config tests start from."""

MINIMAL = """
[accounts.solo]
secret_id = "ops-pipeline/alpaca/solo"
expected_account_number = "PA123"
rest_url = "http://127.0.0.1:8765"
stream_url = "ws://127.0.0.1:8765/stream"
data_url = "http://127.0.0.1:8765"
[accounts.solo.risk]
max_order_notional = 100
max_symbol_notional = 200
max_open_positions = 2
daily_loss_limit = 50
max_qty = 1.5
"""
