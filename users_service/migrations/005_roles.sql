-- What a user may do besides using their own account: `admin` changes credit limits and manages
-- the catalogue. Granted only by an operator (python -m users_service.admin), never through the API;
-- carried in each access token the user gets afterwards (the `roles` claim).
ALTER TABLE users ADD COLUMN roles text[] NOT NULL DEFAULT '{}' CHECK (roles <@ ARRAY['admin']);
