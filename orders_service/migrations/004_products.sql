-- The catalogue: what can be ordered, at what price. orders_service prices every item from here when
-- the order is placed, and stores that price on the item (order_items.unit_price_cents): a later
-- price change never changes an order already placed. A product no longer sold is kept, inactive,
-- so that the orders that name it still name something.
CREATE TABLE products (
    sku text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9_-]{1,64}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_cents bigint NOT NULL CHECK (price_cents BETWEEN 0 AND 10000000),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A small shop to start with; admins change it through PUT /api/v2/products/{sku}.
INSERT INTO products (sku, name, price_cents, active) VALUES
    ('BOOK-42', 'The Hitchhiker''s Guide to the Galaxy, paperback', 1250, true),
    ('BOOK-1984', 'Nineteen Eighty-Four, paperback', 999, true),
    ('NOTEBOOK-A5', 'Dotted notebook, A5', 1500, true),
    ('PEN-01', 'Fountain pen', 2450, true),
    ('INK-01', 'Bottle of ink, 50 ml', 650, true),
    ('MUG-01', 'Enamel mug', 900, true),
    ('TEA-01', 'Loose-leaf tea, 100 g', 500, true),
    ('LAMP-7', 'Desk lamp', 3999, true),
    ('PIANO', 'Upright piano', 450000, true),
    ('TYPEWRITER', 'Portable typewriter (no longer sold)', 18900, false);
