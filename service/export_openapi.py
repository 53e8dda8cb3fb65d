"""`python -m service.export_openapi` writes openapi/openapi.json from the app (a test checks it is current)."""

import json
from pathlib import Path

from service.main import create_app
from service.settings import Settings

TARGET = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def render() -> str:
    settings = Settings(database_url="sqlite:///:memory:", _env_file=None)
    return json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
