from shared.service import run
from users_service.app import create_app
from users_service.config import UsersConfig

run("users_service", create_app, UsersConfig.from_env())
