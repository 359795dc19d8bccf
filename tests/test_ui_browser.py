"""Layer 5: the Dagster UI in a real browser.

``dagster-webserver`` serves the project's definitions on 127.0.0.1 from a temporary Dagster
home and data lake; headless Debian Chromium, driven by Playwright, then

* opens the global asset lineage and finds every asset group of the definitions,
* materializes ``listening/model_comparison`` from its page (launchpad, in-process executor typed into the
  config editor) and follows the run to success,
* opens the metadata of the metric comparison, a trained model and a SQL model and finds their
  plots (PNG images embedded in markdown metadata),
* finds a failing gate in the check history of ``listening/metric_report`` with its config (the
  checks are partitioned like the asset), and the config's red partition among the check's partitions,
* trains and evaluates one config from its chain's job (``listening_train_and_evaluate``: the
  partition picked in the launch dialog, one run) and sees both its model and its report materialized.

A tiny chain (data stage, two model configs, one more that fails its gate, the comparison) is
materialized in-process into the same home first, so the pages have something to show. Screenshots go to
``build/ui-screenshots/``. The module skips when Playwright or Chromium is missing, unless
``SPOTIFY_ENGINE_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where that is a failure.
Playwright's own browser download is never used: ``/usr/bin/chromium`` (or ``$CHROMIUM``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spotify_engine_assets.core.presentation import GROUP_NAME_LIMIT

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "build" / "ui-screenshots"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking switches Chromium's own connections are refused in a closed
# network and page loads stall; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL_CONFIGS = ("most_popular", "lightgcn")
FAILING_CONFIG = "gat_basic"  # trained one epoch: below the most-popular gate of the tiny world
UI_CONFIG = "itemknn"  # trained and evaluated from the UI, through its chain's job
TRAIN_AND_EVALUATE = "listening_train_and_evaluate"
LOCATION = "spotify_engine_assets.definitions"
LAUNCHED_KEY = ["listening", "model_comparison"]
LAUNCHED_ASSET = "/".join(LAUNCHED_KEY)  # the asset's path in the UI's URLs
CORE_GROUPS = ("listening_ingest", "listening_sql", "listening_graph", "listening_train", "listening_eval")
STARTUP_TIMEOUT_S = 90
RUN_TIMEOUT_S = 120
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)"
    return None


_MISSING = _missing_browser()
if _MISSING:
    if os.environ.get("SPOTIFY_ENGINE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"the browser test is required here but cannot run: {_MISSING}")
    pytest.skip(_MISSING, allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=30_000)  # pages poll the server every 2 s; a busy 2-core machine is slow


@dataclass
class UI:
    url: str
    page: Page
    log: Path
    groups: list[str]
    launched: dict = field(default_factory=dict)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def shot(self, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _materialize_tiny_chain(home: Path) -> None:
    """Data stage, two model configs and the comparison, recorded in ``home`` (env already set)."""
    import dagster as dg

    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.runner import DATA_STAGE, MODEL_STAGE, run_config

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        stages = [(DATA_STAGE, run_config("tiny_data.yaml"), None)]
        one_epoch = {**run_config(), "ops": {"listening__trained_model": {"config": {"max_epochs": 1}}}}
        stages += [(MODEL_STAGE, one_epoch, FAILING_CONFIG)]
        stages += [(MODEL_STAGE, run_config("tiny_train.yaml"), name) for name in MODEL_CONFIGS]
        stages += [(dg.AssetSelection.assets(LAUNCHED_KEY), run_config(), None)]
        for selection, config, partition in stages:
            result = dg.materialize(
                [*defs.assets, *defs.asset_checks],
                selection=selection,
                run_config=config,
                instance=instance,
                resources=defs.resources,
                partition_key=partition,
                raise_on_error=False,
            )
            failures = [event.message for event in result.all_events if event.is_failure]
            if partition == FAILING_CONFIG:  # the blocking gate fails the run, after the report is recorded
                gates = [e.passed for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]
                assert gates == [False] and not result.success, f"{FAILING_CONFIG} was meant to fail its gate: {gates}"
                continue
            assert result.success, f"pre-materialization {partition or ''} failed: {failures[:1]}"
    finally:
        instance.dispose()


def _wait_for_location(url: str, server: subprocess.Popen, log: Path) -> None:
    """Until the code location is loaded; a load error fails with Dagster's message."""
    query = json.dumps(
        {
            "query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        }
    ).encode()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(
                f"dagster-webserver exited with {server.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            request = urllib.request.Request(f"{url}/graphql", data=query, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError):
            time.sleep(0.5)
            continue
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            errors = [
                entry["locationOrLoadError"]
                for entry in entries
                if entry["locationOrLoadError"]["__typename"] == "PythonError"
            ]
            assert not errors, f"the code location failed to load in the UI: {errors[0]['message']}"
            return
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-4000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop the webserver and what it started (code server, run workers): its own process group."""
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):  # its state is a temporary folder
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    home, lake = root / "dagster_home", root / "lake"
    home.mkdir()
    lake.mkdir()
    # The project's instance settings; runs launch at once because no daemon runs here to dequeue
    # them (``make ui`` runs ``dagster dev``, whose daemon does).
    (home / "dagster.yaml").write_text(
        (REPO / "spotify_engine_assets" / "configs" / "dagster.yaml").read_text()
        + "\nrun_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # only this run's screenshots
    SCREENSHOTS.mkdir(parents=True)
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "SPOTIFY_ENGINE_DATA_LAKE")}
    os.environ.update(DAGSTER_HOME=str(home), SPOTIFY_ENGINE_DATA_LAKE=str(lake))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "webserver.log"
    webserver = Path(sys.executable).with_name("dagster-webserver")
    if not webserver.exists():
        webserver = Path(shutil.which("dagster-webserver") or webserver)
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [str(webserver), "-m", "spotify_engine_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=os.environ.copy(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _materialize_tiny_chain(home)  # while the webserver loads the definitions
        _wait_for_location(url, server, log)
        from spotify_engine_assets.definitions import defs

        graph = defs.resolve_asset_graph()
        groups = sorted({graph.get(key).group_name for key in graph.get_all_asset_keys()})
        seen = json.load(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{url}/graphql",
                    data=b'{"query": "mutation { setNuxSeen }"}',
                    headers={"Content-Type": "application/json"},
                ),
                timeout=30,
            )
        )
        assert seen == {"data": {"setNuxSeen": True}}, seen  # no first-visit dialog over the pages
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(30_000)
            try:
                yield UI(url, page, log, groups)
            finally:
                browser.close()
    finally:
        _stop(server)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


IN_PROCESS = "execution: {config: {in_process: {}}}"


def _launch(ui: UI) -> str:
    """Materialize the asset from its page once, through the launchpad; the launched run's id.

    The launchpad is the UI's way to pass run config: here the in-process executor, as the CLI and
    ``make test`` do (``configs/run/in_process.yaml``), which spares the run a second process that
    imports torch again.
    """
    if "run_id" not in ui.launched:
        page = ui.page
        page.goto(f"{ui.url}/assets/{LAUNCHED_ASSET}")
        expect(page.get_by_text("Latest materialization")).to_be_visible()
        # the button's accessible name includes its icon's label: match the visible text
        button = page.locator("button").filter(has_text=re.compile(r"^Materialize$"))
        expect(button).to_be_enabled()
        button.locator("xpath=ancestor::div[1]").get_by_role("button", name="arrow_drop_down").click()
        page.get_by_role("menuitem").filter(has_text="Open launchpad").click()
        launchpad = page.get_by_role("dialog")
        editor = launchpad.locator(".CodeMirror")
        expect(editor).to_be_visible()
        editor.click()
        page.keyboard.press("Control+End")
        page.keyboard.press("Enter")
        page.keyboard.type(IN_PROCESS)
        assert IN_PROCESS in editor.evaluate("e => e.CodeMirror.getValue()").splitlines()
        expect(launchpad.get_by_text("No errors")).to_be_visible()
        ui.shot("launchpad")
        launchpad.locator("button").filter(has_text=re.compile(r"^Materialize$")).click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))  # the launchpad opens the new run
        ui.launched["run_id"] = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
    return ui.launched["run_id"]


def test_materialize_from_the_launchpad_launches_a_run(ui):
    """Materializing from the UI launches a run of that asset with the typed config (first, so the
    run goes on while the next tests browse)."""
    run_id = _launch(ui)
    run = ui.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { assetSelection { path } runConfigYaml } } }",
        {"id": run_id},
    )["runOrError"]
    assert run["assetSelection"] == [{"path": LAUNCHED_KEY}]
    assert "in_process" in run["runConfigYaml"]


def test_asset_graph_shows_every_group(ui):
    page = ui.page
    page.goto(f"{ui.url}/asset-groups")
    group_boxes = page.locator('[class*="collapsedGroupNodeBox"]')
    expect(group_boxes).to_have_count(len(ui.groups))
    assert set(CORE_GROUPS) <= set(ui.groups)
    for group in ui.groups:
        # the sidebar lists each group by its full name; the graph draws one box per group
        expect(page.get_by_role("button", name=f"asset_group {group} {group}", exact=True)).to_be_visible()
    # at the zoom that fits every group the graph shortens a label longer than GROUP_NAME_LIMIT in the
    # middle ("playli…_ingestion"); the group names are short enough to be drawn whole
    labels = sorted(text.strip() for text in group_boxes.all_inner_texts())
    assert labels == sorted(ui.groups), f"group boxes {labels} for groups {sorted(ui.groups)}"
    assert max(len(group) for group in ui.groups) <= GROUP_NAME_LIMIT
    ui.shot("asset_graph")


def _open_plot(ui: UI, asset_path: str, key: str, partition: str | None = None):
    """Open the markdown metadata entry ``key`` of the asset's latest materialization; its image."""
    page = ui.page
    query = f"?partition={partition}" if partition else ""
    page.goto(f"{ui.url}/assets/{asset_path}{query}")
    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(key, exact=True)).to_be_visible()
    image = dialog.locator('img[src^="data:image/png;base64,"]')
    expect(image).to_be_visible()
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > 200 and height > 100, (width, height)  # decoded and drawn, not a broken image
    return dialog, image


def test_metric_comparison_metadata_shows_its_plot(ui):
    dialog, image = _open_plot(ui, LAUNCHED_ASSET, "ndcg@10")
    assert image.get_attribute("alt") == "listening: test ndcg@10 per config"
    ui.shot("metric_plot")
    dialog.get_by_role("button", name="Close").click()
    # the comparison table lists both configs the chain materialized
    table_row = ui.page.locator("tr").filter(has=ui.page.get_by_text("comparison", exact=True))
    expect(table_row).to_have_count(1)
    table = table_row
    if table_row.get_by_text("[Show Markdown]").count():  # long markdown opens in a dialog
        table_row.get_by_text("[Show Markdown]").click()
        table = ui.page.get_by_role("dialog")
    for name in MODEL_CONFIGS:
        expect(table.get_by_role("cell", name=name, exact=True).first).to_be_visible()


def test_trained_model_metadata_shows_its_training_curve(ui):
    _, image = _open_plot(ui, "listening/trained_model", "training_curve", partition="lightgcn")
    assert image.get_attribute("alt") == "training curve lightgcn"
    ui.shot("training_curve")


def test_trained_model_page_leads_with_numbers_charted_by_the_ui(ui):
    """The metadata table starts with the numbers (no 38-line config JSON on the first screen), and
    the table's Plots toggle charts them."""
    page = ui.page
    page.goto(f"{ui.url}/assets/listening/trained_model?partition=lightgcn")
    first_key = page.locator("tbody tr td").first
    expect(first_key).to_have_text("best_valid_recall@10")
    config_row = page.locator("tr").filter(has=page.get_by_text("config", exact=True))
    expect(config_row).to_contain_text("embedding_dim")
    expect(config_row).not_to_contain_text("{")
    page.get_by_role("button", name="Plots").click()
    for key in ("best_valid_recall@10", "train_seconds", "seconds_per_epoch"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    ui.shot("trained_model_plots")


def test_sql_model_columns_show_their_descriptions(ui):
    page = ui.page
    page.goto(f"{ui.url}/assets/marts/songs")
    expect(page.get_by_role("cell", name="Song id (a song node of the graph).", exact=True)).to_be_visible()


def test_sql_model_metadata_shows_its_data_quality_plot(ui):
    _, image = _open_plot(ui, "staging/stg_plays", "data_quality")
    assert image.get_attribute("alt") == "staging.stg_plays: NULL and distinct share per column"
    ui.shot("data_quality")


def test_launched_run_succeeds(ui):
    run_id = _launch(ui)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        status = ui.graphql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]
        if status in TERMINAL:
            break
        time.sleep(1)
    assert status == "SUCCESS", f"run {run_id} ended {status}; webserver log:\n{ui.server_log()}"
    page = ui.page
    page.goto(f"{ui.url}/runs/{run_id}")
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page.get_by_text("Succeeded (1)")).to_be_visible()  # the one step, listening__model_comparison
    expect(page.get_by_text(re.compile(r"Finished execution of run")).first).to_be_visible()
    ui.shot("run_success")
    latest = ui.graphql(
        "{ assetOrError(assetKey: {path: %s}) { ... on Asset { assetMaterializations(limit: 1) { runId } } } }"
        % json.dumps(LAUNCHED_KEY)
    )
    assert latest["assetOrError"]["assetMaterializations"] == [{"runId": run_id}]


def test_a_failing_gate_is_listed_with_its_config(ui):
    """The blocking quality_gate of the one-epoch config: its check history names the config (the
    partition) next to the failed result; the passing configs are listed as passed."""
    page = ui.page
    page.goto(f"{ui.url}/assets/listening/metric_report?view=checks&checkDetail=quality_gate")
    page.get_by_text("Execution history", exact=True).click()
    failed = page.locator("tr").filter(has=page.get_by_text(FAILING_CONFIG, exact=True))
    expect(failed).to_have_count(1)
    expect(failed.get_by_text("Failed", exact=True)).to_be_visible()
    expect(failed.get_by_text(re.compile(rf"^{FAILING_CONFIG}: ndcg@10 [0-9.]+ vs threshold"))).to_be_visible()
    for name in MODEL_CONFIGS:
        passed = page.locator("tr").filter(has=page.get_by_text(name, exact=True))
        expect(passed.get_by_text("Passed", exact=True)).to_be_visible()
    ui.shot("failing_gate_history")
    # the check's own partitions: one per config, never-run configs as missing, not passed
    page.get_by_text("Partitions", exact=True).last.click()
    expect(page.get_by_text("Failed (1)", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Passed ({len(MODEL_CONFIGS)})", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Missing \([1-9][0-9]*\)$"))).to_be_visible()
    ui.shot("failing_gate_partitions")
    # a chain whose reports never ran: its gates say so, none of them passed
    page.goto(f"{ui.url}/assets/lastfm/metric_report?view=checks")
    not_evaluated = page.get_by_text(re.compile(r"^not evaluated$", re.IGNORECASE))
    # both checks in the list (and the selected one's latest execution); nth(1) waits for the second
    # to render, where count() would read the page before the list is complete
    expect(not_evaluated.first).to_be_visible()
    expect(not_evaluated.nth(1)).to_be_visible()
    expect(page.get_by_text(re.compile(r"^(succeeded|passed|failed)$", re.IGNORECASE))).to_have_count(0)
    ui.shot("never_run_checks")


def _latest_materialization(ui: UI, key: list[str], partition: str) -> dict | None:
    data = ui.graphql(
        "query($key: AssetKeyInput!, $p: [String!]) { assetOrError(assetKey: $key) { ... on Asset { "
        "assetMaterializations(partitions: $p, limit: 1) { runId partition } } } }",
        {"key": {"path": key}, "p": [partition]},
    )
    found = data["assetOrError"]["assetMaterializations"]
    return found[0] if found else None


def test_one_config_is_trained_and_evaluated_from_its_job(ui):
    """Jobs -> listening_train_and_evaluate -> Materialize all -> pick one config -> Launch 1 run: the
    run materializes that config's trained model and metric report (and recommendations)."""
    assert _latest_materialization(ui, ["listening", "trained_model"], UI_CONFIG) is None
    page = ui.page
    page.goto(f"{ui.url}/locations/{LOCATION}/jobs/{TRAIN_AND_EVALUATE}")
    expect(page.get_by_text(re.compile(r"^Train, evaluate and serve one listening model config"))).to_be_visible()
    page.locator("button").filter(has_text=re.compile(r"^Materialize all")).click()
    dialog = page.locator(".bp5-dialog")
    expect(dialog.get_by_text("Launch runs to materialize 3 assets")).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    page.keyboard.type(UI_CONFIG)
    page.locator(".dagster-popover").get_by_text(UI_CONFIG, exact=True).first.click()
    page.keyboard.press("Escape")  # closes the partition list, not the dialog
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    ui.shot("train_and_evaluate_dialog")
    dialog.locator("button").filter(has_text=re.compile(r"^Launch 1 run$")).click()
    deadline = time.monotonic() + 2 * RUN_TIMEOUT_S  # a run process of its own: imports torch, trains, evaluates
    run = None
    while time.monotonic() < deadline:
        runs = ui.graphql(
            "query($job: String!) { runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { "
            "runId status tags { key value } } } } }",
            {"job": TRAIN_AND_EVALUATE},
        )["runsOrError"]["results"]
        run = runs[0] if runs else None
        if run and run["status"] in TERMINAL:
            break
        time.sleep(1)
    assert run is not None, f"no {TRAIN_AND_EVALUATE} run was launched; webserver log:\n{ui.server_log()}"
    assert run["status"] == "SUCCESS", f"run {run['runId']} ended {run['status']}; webserver log:\n{ui.server_log()}"
    assert {"key": "dagster/partition", "value": UI_CONFIG} in run["tags"]
    for asset in ("trained_model", "metric_report"):
        assert _latest_materialization(ui, ["listening", asset], UI_CONFIG) == {
            "runId": run["runId"],
            "partition": UI_CONFIG,
        }
    page.goto(f"{ui.url}/assets/listening/metric_report?partition={UI_CONFIG}")
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    ui.shot("train_and_evaluate_report")
