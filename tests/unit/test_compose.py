"""docker-compose.yml, deploy/Dockerfile and .env.example, checked against the code they run.

No Docker is needed: the compose file is read as YAML and its `${NAME:-default}` interpolation is
expanded here, with the defaults (what a fresh checkout without a .env file runs) or with a chosen
environment. Every value a service is given is then compared with what the config class that reads it
declares, so a typo'd variable, a port that disagrees with a health check or a host name that is not a
compose service fails here rather than in a container that never becomes healthy.
"""

import dataclasses
import importlib.util
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig
from orders_service.config import OrdersConfig
from shared.broker_setup import BrokerSetupConfig
from shared.bus_contract import bus
from shared.config import BaseConfig, OperatorConfig
from tests.observability import OBSERVABILITY_SERVICES, PROFILE
from users_service.config import UsersConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "create-databases.sh"
PYPROJECT = ROOT / "pyproject.toml"

APP_SERVICES: dict[str, type[BaseConfig]] = {
    "users_service": UsersConfig,
    "orders_service": OrdersConfig,
    "gateway": GatewayConfig,
}
# The one-shot that sets the broker up, and the operator's tools (the profile `tools`), run the same
# image with the config classes of their own.
BROKER_SETUP, TOOLS = "broker-setup", "tools"
TOOLS_PROFILE = "tools"
CONFIGS: dict[str, type[BaseConfig]] = {
    **APP_SERVICES,
    BROKER_SETUP: BrokerSetupConfig,
    TOOLS: OperatorConfig,
}
# The settings a container's other commands read, besides its config class's: the tools also run
# the operator's command for the admin role (`python -m users_service.admin`), which reads
# users_service's settings, for its database.
ALSO_READ: dict[str, tuple[type[BaseConfig], ...]] = {TOOLS: (UsersConfig,)}
LONG_RUNNING = ("postgres", "rabbitmq", *APP_SERVICES, *OBSERVABILITY_SERVICES)
SERVICES_WITH_A_DATABASE = ("users_service", "orders_service")
# The gateway too, for the flow page's tap on every event.
SERVICES_WITH_A_BROKER = (*SERVICES_WITH_A_DATABASE, "gateway")
MANAGEMENT_PORT = 15672
# The gateway settings that name an upstream, and the compose service each must point at.
UPSTREAM_SETTINGS = {"USERS_SERVICE_URL": "users_service", "ORDERS_SERVICE_URL": "orders_service"}
# The key files each service reads, by the keygen option that writes the same file.
KEY_SETTINGS = {"JWT_PRIVATE_KEY_FILE": "--private", "JWT_PUBLIC_KEY_FILE": "--public"}

Compose = dict[str, Any]


# --- compose interpolation ----------------------------------------------------------------------

_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_WITH_DEFAULT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*):-(?P<default>[^$]*)")


@dataclasses.dataclass
class Interpolation:
    """Expands compose's `${NAME:-default}` and `$$`, and records every name and default it met.

    Only the form with a default is accepted: `docker compose up` must work from a fresh checkout
    with no .env file, so no variable may be required, and none may silently become empty.
    """

    environ: Mapping[str, str]
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)

    def expand(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match["escaped"]:
                return "$"
            reference = match["braced"] if match["braced"] is not None else match["bare"]
            parsed = _WITH_DEFAULT.fullmatch(reference)
            if parsed is None:
                raise ValueError(f"{match[0]!r} has no default: write ${{NAME:-default}}")
            name, default = parsed["name"], parsed["default"]
            if self.defaults.setdefault(name, default) != default:
                raise ValueError(f"{name} has two different defaults: {self.defaults[name]!r}, {default!r}")
            return self.environ.get(name) or default

        return _REFERENCE.sub(replace, text)

    def expand_tree(self, node: Any) -> Any:
        """Compose interpolates values, not keys."""
        if isinstance(node, str):
            return self.expand(node)
        if isinstance(node, list):
            return [self.expand_tree(item) for item in node]
        if isinstance(node, dict):
            return {key: self.expand_tree(value) for key, value in node.items()}
        return node


def load_compose(environ: Mapping[str, str] | None = None) -> tuple[Compose, dict[str, str]]:
    """The compose file as compose runs it, and every variable it interpolates with its default."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(raw, dict)
    interpolation = Interpolation({} if environ is None else environ)
    expanded = interpolation.expand_tree(raw)
    assert isinstance(expanded, dict)
    return expanded, interpolation.defaults


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()[0]


# --- reading compose services -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_named_volume(self) -> bool:
        return not self.source.startswith((".", "/", "~"))


@dataclasses.dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    host_port: int
    container_port: int


def service(compose: Compose, name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def default_services(compose: Compose) -> set[str]:
    """What a plain `docker compose up` starts: the services in no profile."""
    return {name for name in compose["services"] if not service(compose, name).get("profiles")}


def environment(compose: Compose, name: str) -> dict[str, str]:
    """A service's environment in either of compose's forms, as the strings the process sees."""
    declared = service(compose, name).get("environment") or {}
    if isinstance(declared, list):
        pairs = [item.split("=", 1) for item in declared]
        assert all(len(pair) == 2 for pair in pairs), f"{name}: a variable without a value: {declared}"
        declared = dict(pairs)
    return {key: str(value) for key, value in declared.items()}


def mounts(compose: Compose, name: str) -> list[Mount]:
    found = []
    for volume in service(compose, name).get("volumes", []):
        if isinstance(volume, dict):
            found.append(Mount(volume["source"], volume["target"], bool(volume.get("read_only", False))))
            continue
        source, target, *mode = volume.split(":")
        found.append(Mount(source, target, "ro" in ",".join(mode).split(",")))
    return found


def published_ports(compose: Compose, name: str) -> list[PublishedPort]:
    found = []
    for port in service(compose, name).get("ports", []):
        if isinstance(port, dict):
            found.append(PublishedPort(port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")  # [[host_ip:]host_port:]container_port[/protocol]
        if len(parts) == 1:
            found.append(PublishedPort("", 0, int(parts[0])))  # on a port Docker picks
            continue
        found.append(PublishedPort(":".join(parts[:-2]), int(parts[-2]), int(parts[-1])))
    return found


def command(compose: Compose, name: str) -> list[str]:
    declared = service(compose, name)["command"]
    return shlex.split(declared) if isinstance(declared, str) else [str(part) for part in declared]


def option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


def seconds(duration: str) -> float:
    """A compose duration such as `15s`, `1m30s` or `500ms`."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts, duration
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def settings_read_by(config_class: type[BaseConfig]) -> set[str]:
    return {field.metadata["env"] for field in dataclasses.fields(config_class)}


def container_environment(compose: Compose, name: str) -> dict[str, str]:
    """What the process sees: the image's ENV, overridden by the service's environment."""
    return {**image_environment(), **environment(compose, name)}


def config_of(compose: Compose, name: str) -> BaseConfig:
    """The service's config as the process builds it (which also proves every value converts)."""
    return CONFIGS[name].from_env(container_environment(compose, name))


def broker_setup_of(compose: Compose) -> BrokerSetupConfig:
    config = config_of(compose, BROKER_SETUP)
    assert isinstance(config, BrokerSetupConfig)
    return config


def mount_holding(compose: Compose, name: str, path: str) -> Mount:
    """The volume mounted over the folder that holds `path` in the service's container."""
    holding = [
        mount for mount in mounts(compose, name) if PurePosixPath(path).parent == PurePosixPath(mount.target)
    ]
    assert len(holding) == 1, f"{name}: {path} is not in a folder that a volume is mounted on"
    return holding[0]


def url(value: str) -> SplitResult:
    parts = urlsplit(value)
    assert parts.hostname, f"no host in {value!r}"
    return parts


# --- reading the Dockerfile ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions() -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped, as Docker reads them."""
    instructions = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages() -> list[list[Instruction]]:
    """The instructions of each stage, FROM first; what precedes the first FROM is left out."""
    found: list[list[Instruction]] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def image_environment() -> dict[str, str]:
    """The ENV of the final stage: what every container of the image starts with."""
    variables = {}
    for instruction in stages()[-1]:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.arguments)
        if "=" not in words[0]:
            variables[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            variables[name] = value
    return variables


def copy_sources(instruction: Instruction) -> list[str]:
    words = [word for word in shlex.split(instruction.arguments) if not word.startswith("--")]
    return words[:-1]


def glob_expression(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression: `*`, `?` and `[...]` stay within one path
    segment, `**` spans any number of them."""
    tokens = re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern)
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(
        translated.get(token, token if token.startswith("[") else re.escape(token)) for token in tokens
    )


def is_dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context.

    As Docker reads it: the last pattern that matches wins, and `!` takes a path back in.
    """
    ignored = False
    candidates = [str(PurePosixPath(path)), *(str(parent) for parent in PurePosixPath(path).parents)][:-1]
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        expression = glob_expression(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(expression, candidate) for candidate in candidates):
            ignored = not pattern.startswith("!")
    return ignored


def pip_installs(stage: list[Instruction]) -> list[list[str]]:
    """The arguments after `pip install` of every such command the stage runs."""
    installs = []
    for instruction in stage:
        if instruction.keyword != "RUN":
            continue
        for step in instruction.arguments.split("&&"):
            words = shlex.split(step)
            for index in range(len(words) - 1):
                if PurePosixPath(words[index]).name in {"pip", "pip3"} and words[index + 1] == "install":
                    installs.append(words[index + 2 :])
    return installs


# --- the services -------------------------------------------------------------------------------


def test_the_stack_has_exactly_the_expected_services(compose: Compose) -> None:
    assert default_services(compose) == {"postgres", "rabbitmq", "keygen", BROKER_SETUP, *APP_SERVICES}
    profiles = {
        name: service(compose, name)["profiles"]
        for name in set(compose["services"]) - default_services(compose)
    }
    assert profiles == {**{name: [PROFILE] for name in OBSERVABILITY_SERVICES}, TOOLS: [TOOLS_PROFILE]}


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_health_check_and_restarts(compose: Compose, name: str) -> None:
    declared = service(compose, name)
    healthcheck = declared.get("healthcheck", {})
    test = healthcheck.get("test")
    assert test, f"{name} has no health check, so nothing can wait until it is ready"
    assert not healthcheck.get("disable", False)
    assert isinstance(test, str) or test[0] in {"CMD", "CMD-SHELL"}, "NONE disables it"
    assert declared.get("restart") == "unless-stopped"


def test_the_key_generator_runs_once(compose: Compose) -> None:
    keygen = service(compose, "keygen")
    assert keygen.get("restart") == "no"  # quoted in YAML: a bare `no` would be the boolean false
    assert "healthcheck" not in keygen
    assert "ports" not in keygen
    assert command(compose, "keygen")[:3] == ["python", "-m", "users_service.keygen"]
    assert importlib.util.find_spec("users_service.keygen") is not None


def test_the_broker_setup_runs_once_as_the_administrator(compose: Compose) -> None:
    setup = service(compose, BROKER_SETUP)
    assert setup.get("restart") == "no"
    assert "healthcheck" not in setup
    assert "ports" not in setup
    assert command(compose, BROKER_SETUP) == ["python", "-m", "shared.broker_setup"]
    assert importlib.util.find_spec("shared.broker_setup") is not None
    config = broker_setup_of(compose)
    management = url(config.rabbitmq_management_url)
    assert (management.scheme, management.hostname, management.port) == ("http", "rabbitmq", MANAGEMENT_PORT)
    assert MANAGEMENT_PORT in {port.container_port for port in published_ports(compose, "rabbitmq")}


@pytest.mark.parametrize("variables", ["defaults", "changed"])
def test_the_administrator_is_rabbitmqs_own_user_and_no_process_signs_in_as_it(variables: str) -> None:
    compose = compose_run_with(variables)
    rabbitmq = environment(compose, "rabbitmq")
    config = broker_setup_of(compose)
    assert (config.rabbitmq_admin_user, config.rabbitmq_admin_password.value) == (
        rabbitmq["RABBITMQ_DEFAULT_USER"],
        rabbitmq["RABBITMQ_DEFAULT_PASS"],
    )
    signed_in = {
        url(value).username
        for name in compose["services"]
        for setting, value in environment(compose, name).items()
        if setting in {"RABBITMQ_URL", "RABBITMQ_OPERATOR_URL"}
    }
    assert signed_in == {*bus().services, config.rabbitmq_operator_user}
    assert config.rabbitmq_admin_user not in signed_in


def test_start_up_waits_for_health_for_the_key_pair_and_for_the_brokers_users(compose: Compose) -> None:
    healthy, done = "service_healthy", "service_completed_successfully"
    expected = {
        BROKER_SETUP: {"rabbitmq": healthy},
        "users_service": {"postgres": healthy, "rabbitmq": healthy, BROKER_SETUP: done, "keygen": done},
        "orders_service": {"postgres": healthy, "rabbitmq": healthy, BROKER_SETUP: done, "keygen": done},
        "gateway": {
            "postgres": healthy,  # for the rate limits its replicas share
            "rabbitmq": healthy,  # for the flow page's tap
            BROKER_SETUP: done,
            "users_service": healthy,
            "orders_service": healthy,
            "keygen": done,
        },
    }
    actual = {}
    for name in compose["services"]:
        depends_on = service(compose, name).get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions waits for nothing"
        actual[name] = {dependency: spec["condition"] for dependency, spec in depends_on.items()}
    assert actual == expected


def test_only_the_gateway_and_the_management_ui_are_published_by_default(compose: Compose) -> None:
    # The profile's UIs are checked in test_observability.py: on this machine only, every one.
    published = {
        name: {port.container_port for port in published_ports(compose, name)}
        for name in default_services(compose)
        if published_ports(compose, name)
    }
    gateway = config_of(compose, "gateway")
    assert published == {"gateway": {gateway.http_port}, "rabbitmq": {15672}}
    gateway_port = published_ports(compose, "gateway")[0]
    assert gateway_port.host_port == gateway_port.container_port == 8080


def test_the_services_share_one_image_built_from_the_dockerfile(compose: Compose) -> None:
    users_image = service(compose, "users_service")["image"]
    for name in ("keygen", BROKER_SETUP, TOOLS, *APP_SERVICES):
        declared = service(compose, name)
        assert declared["image"] == users_image, "one image name, so that it is built once"
        assert (ROOT / declared["build"]["context"]).resolve() == ROOT
        assert (ROOT / declared["build"]["context"] / declared["build"]["dockerfile"]).resolve() == DOCKERFILE
    instructions = dockerfile_instructions()
    arguments = [index for index, i in enumerate(instructions) if i.keyword == "ARG"]
    assert arguments, "no ARG PYTHON_IMAGE"
    assert arguments[0] < [i.keyword for i in instructions].index("FROM"), "FROM cannot see it"
    name, _, dockerfile_default = instructions[arguments[0]].arguments.partition("=")
    assert name == "PYTHON_IMAGE"
    assert service(compose, "users_service")["build"]["args"] == {"PYTHON_IMAGE": dockerfile_default}


# --- each application service against its config class -----------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variable_a_service_is_given_is_one_its_config_reads(compose: Compose, name: str) -> None:
    read = settings_read_by(CONFIGS[name]).union(*map(settings_read_by, ALSO_READ.get(name, ())))
    unread = set(environment(compose, name)) - read
    assert not unread, f"{name} is given variables that nothing reads: {sorted(unread)}"


def test_the_tools_grant_roles_in_users_service_s_own_database(compose: Compose) -> None:
    tools = UsersConfig.from_env(container_environment(compose, TOOLS))
    users = config_of(compose, "users_service")
    assert isinstance(users, UsersConfig)
    assert tools.database_url == users.database_url


@pytest.mark.parametrize("name", CONFIGS)
def test_settings_whose_defaults_fit_only_a_developer_machine_are_set(compose: Compose, name: str) -> None:
    # Loopback addresses and paths relative to a checkout are right for `make dev` and wrong in a
    # container; every such setting must be given, by the service or by the image.
    given = container_environment(compose, name)
    for env, default, _ in CONFIGS[name].documented_settings():
        if "127.0.0.1" in default or "localhost" in default or default.startswith(".keys/"):
            assert given.get(env, default) != default, f"{name} runs with the local default {env}={default}"
    if name in APP_SERVICES:
        assert config_of(compose, name).http_host == "0.0.0.0"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_command_runs_the_package_of_the_config(compose: Compose, name: str) -> None:
    package = APP_SERVICES[name].__module__.partition(".")[0]
    assert command(compose, name) == ["python", "-m", package]
    assert importlib.util.find_spec(f"{package}.__main__") is not None


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_health_check_asks_readyz_on_the_port_the_service_listens_on(compose: Compose, name: str) -> None:
    assert "HTTP_PORT" in environment(compose, name), "the port is said where the health check shows it"
    test = service(compose, name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "the image has Python, not curl"
    urls = re.findall(r"https?://[^'\"\s]+", test[3])
    assert len(urls) == 1, test
    checked = url(urls[0])
    assert checked.hostname in {"127.0.0.1", "localhost"}
    assert checked.port == config_of(compose, name).http_port
    assert checked.path == "/readyz"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_docker_waits_longer_than_the_service_takes_to_shut_down(compose: Compose, name: str) -> None:
    grace = seconds(service(compose, name)["stop_grace_period"])
    assert grace > config_of(compose, name).shutdown_timeout


def test_the_gateway_reaches_each_service_by_its_compose_name_and_port(compose: Compose) -> None:
    given = environment(compose, "gateway")
    for setting, upstream in UPSTREAM_SETTINGS.items():
        target = url(given[setting])
        assert target.scheme == "http"
        assert target.hostname == upstream
        assert upstream in compose["services"]
        assert target.port == config_of(compose, upstream).http_port
        assert target.path in {"", "/"}


# --- databases, broker and keys -----------------------------------------------------------------


def init_script_defaults() -> dict[str, str]:
    """The `${NAME:-default}` values that create-databases.sh falls back to."""
    calls = [
        line for line in INIT_SCRIPT.read_text().splitlines() if line.startswith("create_service_database ")
    ]
    assert calls, "create-databases.sh creates no database"
    return dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", "\n".join(calls)))


def compose_run_with(variables: str) -> Compose:
    """With the defaults, or with every variable changed: then a value written in one place only (a
    password in a URL but not in the server's environment) shows as a mismatch."""
    if variables == "defaults":
        return load_compose()[0]
    return load_compose({name: f"changed-{name.lower()}" for name in load_compose()[1]})[0]


@pytest.mark.parametrize("variables", ["defaults", "changed"])
@pytest.mark.parametrize("name", SERVICES_WITH_A_DATABASE)
def test_each_service_uses_the_database_and_role_the_init_script_creates(name: str, variables: str) -> None:
    compose = compose_run_with(variables)
    prefix = name.removesuffix("_service").upper()
    script = init_script_defaults()
    database = url(environment(compose, name)["DATABASE_URL"])
    postgres = environment(compose, "postgres")
    assert database.scheme == "postgresql"
    assert database.hostname == "postgres"
    assert "postgres" in compose["services"]
    assert database.port in {None, 5432}
    assert database.path == "/" + script[f"{prefix}_DB_NAME"]
    assert database.username == script[f"{prefix}_DB_USER"]
    assert database.password == postgres[f"{prefix}_DB_PASSWORD"], (
        "the role's password, as the script sets it"
    )


@pytest.mark.parametrize("variables", ["defaults", "changed"])
def test_postgres_is_healthy_only_once_it_answers_over_tcp_as_its_superuser(variables: str) -> None:
    compose = compose_run_with(variables)
    test = service(compose, "postgres")["healthcheck"]["test"]
    postgres = environment(compose, "postgres")
    assert test[:2] == ["CMD", "pg_isready"]
    # While the init scripts run, the image's temporary server listens on its Unix socket only.
    assert option(test, "-h") == "127.0.0.1"
    assert (option(test, "-U"), option(test, "-d")) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])


def test_the_init_script_is_mounted_where_postgres_runs_it(compose: Compose) -> None:
    assert os.access(INIT_SCRIPT, os.X_OK), "not executable, the image would source it into its own shell"
    init = [
        mount
        for mount in mounts(compose, "postgres")
        if mount.target.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert len(init) == 1
    assert init[0].read_only
    assert (ROOT / init[0].source).resolve() == INIT_SCRIPT
    assert init[0].target.endswith(".sh")
    assert Mount("postgres-data", "/var/lib/postgresql/data", False) in mounts(compose, "postgres")
    assert Mount("rabbitmq-data", "/var/lib/rabbitmq", False) in mounts(compose, "rabbitmq")


def amqp_broker(value: str) -> SplitResult:
    """A broker URL that reaches the compose service `rabbitmq` over AMQP."""
    broker = url(value)
    assert broker.scheme == "amqp"
    assert broker.hostname == "rabbitmq"
    assert broker.port in {None, 5672}
    return broker


@pytest.mark.parametrize("variables", ["defaults", "changed"])
@pytest.mark.parametrize("name", SERVICES_WITH_A_BROKER)
def test_each_service_signs_in_to_the_broker_as_its_own_user(name: str, variables: str) -> None:
    # As the user named after it, with the password broker-setup gives that user: the broker then
    # lets it publish only its own event types, and its consumers know who sent what.
    compose = compose_run_with(variables)
    broker = amqp_broker(environment(compose, name)["RABBITMQ_URL"])
    setup = broker_setup_of(compose)
    assert broker.username == name
    assert broker.password == setup.password_of(name), "the password broker-setup sets for it"
    assert name in setup.service_passwords(), "a default (development-only) password"


@pytest.mark.parametrize("variables", ["defaults", "changed"])
def test_broker_setup_makes_a_user_for_every_service_of_the_bus(variables: str) -> None:
    compose = compose_run_with(variables)
    passwords = broker_setup_of(compose).service_passwords()
    assert set(passwords) == set(bus().services) == set(SERVICES_WITH_A_BROKER)
    # Changed, two services that shared a variable would share a password too.
    assert len(set(passwords.values())) == len(passwords), "each service's password from its own variable"


@pytest.mark.parametrize("variables", ["defaults", "changed"])
def test_the_tools_sign_in_as_the_operator(variables: str) -> None:
    compose = compose_run_with(variables)
    tools = config_of(compose, TOOLS)
    assert isinstance(tools, OperatorConfig)
    broker = amqp_broker(tools.rabbitmq_operator_url.value)
    setup = broker_setup_of(compose)
    assert (broker.username, broker.password) == (
        setup.rabbitmq_operator_user,
        setup.rabbitmq_operator_password.value,
    )


def key_files(compose: Compose, name: str) -> Iterator[tuple[str, str]]:
    """(setting, path) of every key file the service reads."""
    given = environment(compose, name)
    for setting in KEY_SETTINGS:
        if setting in given:
            yield setting, given[setting]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_key_files_are_read_from_the_volumes_the_key_generator_writes(compose: Compose, name: str) -> None:
    keygen = command(compose, "keygen")
    assert {setting for setting, _ in key_files(compose, name)} >= {"JWT_PUBLIC_KEY_FILE"}
    for setting, path in key_files(compose, name):
        written = option(keygen, KEY_SETTINGS[setting])
        read_from = mount_holding(compose, name, path)
        written_to = mount_holding(compose, "keygen", written)
        assert read_from.is_named_volume
        assert read_from.source in compose["volumes"]
        assert read_from.source == written_to.source, f"{name} reads {setting} from another volume"
        assert PurePosixPath(path).name == PurePosixPath(written).name
        assert read_from.read_only, f"{name} could overwrite the key pair"
        assert not written_to.read_only


def test_only_users_service_sees_the_private_key(compose: Compose) -> None:
    private = mount_holding(compose, "keygen", option(command(compose, "keygen"), "--private")).source
    public = mount_holding(compose, "keygen", option(command(compose, "keygen"), "--public")).source
    assert private != public
    holders = {
        name for name in compose["services"] if private in {mount.source for mount in mounts(compose, name)}
    }
    assert holders == {"keygen", "users_service"}
    assert "JWT_PRIVATE_KEY_FILE" in environment(compose, "users_service")


def test_every_named_volume_is_declared_and_used(compose: Compose) -> None:
    used = {
        mount.source
        for name in compose["services"]
        for mount in mounts(compose, name)
        if mount.is_named_volume
    }
    assert used == set(compose["volumes"])


# --- .env.example -------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    variables = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f".env.example: {line!r} is not NAME=value"
            variables[name.strip()] = value.strip()
    return variables


def test_env_example_lists_every_interpolated_variable_with_its_default() -> None:
    _, interpolated = load_compose()
    assert interpolated, "the compose file interpolates nothing?"
    assert env_example() == interpolated


def test_interpolation_needs_a_default_and_expands_like_compose() -> None:
    interpolation = Interpolation({"SET": "value", "EMPTY": ""})
    assert interpolation.expand("a ${SET:-x} ${EMPTY:-y} ${UNSET:-z} $$HOME") == "a value y z $HOME"
    for required in ("${NAME}", "$NAME", "${NAME:?message}", "${NAME-default}"):
        with pytest.raises(ValueError, match="has no default"):
            interpolation.expand(required)


# --- the Dockerfile -----------------------------------------------------------------------------


def test_the_image_is_built_in_two_stages_from_one_base() -> None:
    froms = [stage[0].arguments.split() for stage in stages()]
    assert len(froms) == 2, "a builder stage and a runtime stage"
    assert all(words[0] == "${PYTHON_IMAGE}" for words in froms)
    builder = froms[0][-1]
    runtime_copies = [i for i in stages()[1] if i.keyword in {"COPY", "ADD"}]
    assert runtime_copies, "the runtime stage copies nothing from the builder"
    for copy in runtime_copies:
        only_the_venv = f"the runtime stage gets the virtual environment only, not {copy.arguments}"
        assert f"--from={builder}" in copy.arguments.split(), only_the_venv
        assert copy_sources(copy) == ["/opt/venv"], only_the_venv


def test_the_image_runs_as_a_user_other_than_root() -> None:
    users = [i.arguments for i in stages()[-1] if i.keyword == "USER"]
    assert users, "no USER: the processes would run as root"
    user = users[-1].partition(":")[0]
    assert user not in {"root", "0", ""}
    runs = " && ".join(i.arguments for i in stages()[-1] if i.keyword == "RUN")
    useradd = next(shlex.split(step) for step in runs.split("&&") if step.split()[0] == "useradd")
    uid = next(useradd[index + 1] for index, word in enumerate(useradd) if word in {"--uid", "-u"})
    assert user in {useradd[-1], uid}, "USER is not the user the image creates"


def test_the_image_installs_the_production_lock_with_hashes_and_the_project_not_editable() -> None:
    installs = pip_installs(stages()[0])
    assert not pip_installs(stages()[-1]), "the runtime stage installs nothing: it copies the venv"
    lock = [words for words in installs if "requirements.lock" in words]
    assert len(lock) == 1
    assert "--require-hashes" in lock[0]
    assert "--no-deps" in lock[0]
    assert lock[0][lock[0].index("requirements.lock") - 1] in {"-r", "--requirement"}
    project = [words for words in installs if "." in words]
    assert len(project) == 1
    assert not {"-e", "--editable"} & set(project[0])
    everything = " ".join(i.arguments for i in dockerfile_instructions())
    assert "requirements-dev.lock" not in everything
    assert "[dev]" not in everything


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    sources = [
        source
        for instruction in dockerfile_instructions()
        if instruction.keyword in {"COPY", "ADD"} and "--from=" not in instruction.arguments
        for source in copy_sources(instruction)
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not is_dockerignored(source), f"COPY {source}: .dockerignore keeps it out of the build"
    packages = {
        pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= set(sources), "a package pyproject.toml installs is not copied into the image"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (".env", ".keys/jwt-private.pem", ".git/config", ".venv/bin/python", "tests/unit/x.py"):
        assert is_dockerignored(path), path
    for path in ("shared/__pycache__/config.cpython-311.pyc", "gateway/app.pyc", "requirements-dev.lock"):
        assert is_dockerignored(path), path
    assert not is_dockerignored("shared/config.py")


def test_the_image_makes_the_key_folders_the_volumes_mount_on(compose: Compose) -> None:
    created = " ".join(i.arguments for i in stages()[-1] if i.keyword == "RUN")
    for mount in mounts(compose, "keygen"):
        assert mount.target in created, f"{mount.target} must exist in the image, owned by the app user"


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def test_package_data_covers_every_file_the_installed_packages_need() -> None:
    # The image installs the project (not editable), so a file that package-data does not list is
    # missing in containers while everything works from a checkout.
    setuptools = pyproject()["tool"]["setuptools"]
    patterns = setuptools["package-data"]["*"]
    for include in setuptools["packages"]["find"]["include"]:
        package = ROOT / include.rstrip("*")
        for path in package.rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in {".py", ".pyc"}:
                continue
            relative = PurePosixPath(path.relative_to(package).as_posix())
            assert any(relative.match(pattern) for pattern in patterns), f"{path} is not in package-data"
