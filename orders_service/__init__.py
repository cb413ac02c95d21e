"""orders_service: orders, their items, and (with the saga) their lifecycle."""
