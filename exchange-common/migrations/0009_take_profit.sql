-- Take-profit orders (Binance TAKE_PROFIT / TAKE_PROFIT_LIMIT): like stop
-- orders they wait for stop_price, but trigger in the opposite direction
-- (a buy when the last price falls to it, a sell when it rises to it).
-- The type names are the domain's OrderType wire names.
--
-- The new list is a superset of 0002's, so every existing row passes; the
-- re-check scans orders once under the migration's lock.
ALTER TABLE orders DROP CONSTRAINT orders_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_type_check CHECK (
    type IN ('limit', 'market', 'stop_limit', 'stop_market',
             'take_profit_limit', 'take_profit_market')
);
