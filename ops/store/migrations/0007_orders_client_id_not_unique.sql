-- Two writers (stream, dispatcher, position manager) may upsert the same new order at
-- once. The upsert's conflict target is the broker order id; a second UNIQUE index on
-- (account, client_order_id) is not an arbiter, so the concurrent insert failed with a
-- unique violation there instead of becoming an update. The broker already guarantees
-- client_order_id uniqueness per account; we only need to look orders up by it.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_account_client_order_id_key;
CREATE INDEX IF NOT EXISTS orders_account_client_order_id_idx
    ON orders (account, client_order_id);
