"""Run the real serving stack (DrainingServer) on a slow test engine.

python -m tests.server.serve_slow PORT DELAY [JOBS_DIR RUN_LOG]
"""

import sys

import uvicorn

from server.api.app import create_app
from server.serving.lifecycle import DrainingServer
from server.settings import Settings
from tests.server.engines import GatedEngine


def main() -> None:
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    jobs = {"jobs_dir": sys.argv[3]} if len(sys.argv) > 3 else {}
    run_log = sys.argv[4] if len(sys.argv) > 4 else None
    settings = Settings(api_keys=["k"], port=port, drain_grace_s=30, max_pending_jobs=100_000, **jobs)
    app = create_app(settings, GatedEngine(delay=delay, run_log=run_log))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    DrainingServer(config, app.state.lifecycle, app.state.work, settings.drain_grace_s).run()


if __name__ == "__main__":
    main()
