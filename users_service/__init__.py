"""users_service: users, credentials, access tokens and credit accounts."""
