"""The `lookalike` command line, on top of :mod:`api.client`.

    lookalike index photos/ --collection photos        # recursive, resumable, with a progress bar
    lookalike query cat.jpg --collection photos -k 5   # a table, or --json
    lookalike check upload.jpg --collection banned --allow known-good
    lookalike task <task id>
    lookalike collections
    lookalike calibrate pairs.jsonl --precision 0.99 --collection banned --apply

``--url`` and ``--api-key`` come from flags or LOOKALIKE_API_URL / LOOKALIKE_API_KEY.
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import click
import requests
from tqdm import tqdm

from api.client import KEY_VARIABLE, URL_VARIABLE, ApiError, Client, TaskFailed
from shared.calibration import propose_threshold

class Failed(click.ClickException):
    exit_code = 2


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
FAILURES_SHOWN = 20


@click.group()
@click.option("--url", envvar=URL_VARIABLE, default="http://127.0.0.1:8000", show_default=True,
              help=f"The API's address (or {URL_VARIABLE}).")
@click.option("--api-key", envvar=KEY_VARIABLE, default=None, help=f"An API key (or {KEY_VARIABLE}).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for a request or a task.")
@click.pass_context
def main(context: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Index images into Lookalike and ask it what looks alike."""
    context.obj = Client(url, api_key, timeout=timeout)


def image_files(paths: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``(image id, file)`` for each image: files as named, directories walked recursively.

    Ids are paths relative to the directory given (``photos/2026/cat.jpg`` under ``photos/``
    is ``2026/cat.jpg``), with ``/`` on every system; a file given directly is its name.
    """
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            for file in sorted(given.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((file.relative_to(given).as_posix(), file))
        elif given.is_file():
            found.append((given.name, given))
        else:
            raise click.BadParameter(f"{given} is neither a file nor a directory", param_hint="PATHS")
    return found


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--collection", "-c", required=True, help="The collection to index into.")
@click.option("--batch-size", default=16, show_default=True, help="Images per bulk request.")
@click.option("--concurrency", default=4, show_default=True, help="Bulk requests in flight at once.")
@click.option("--no-resume", is_flag=True, help="Index every image, even ids the collection already holds.")
@click.pass_obj
def index(client: Client, paths: tuple[str, ...], collection: str, batch_size: int, concurrency: int,
          no_resume: bool) -> None:
    """Index image files and directories (recursively); ids are their relative paths."""
    files = image_files(paths)
    already = set() if no_resume else _finished(lambda: client.image_ids(collection))
    todo = [(image_id, file) for image_id, file in files if image_id not in already]
    click.echo(f"{len(files)} images found, {len(files) - len(todo)} already indexed, {len(todo)} to index", err=True)
    failures: list[tuple[str, str, str]] = []  # (image id, code, message)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    with tqdm(total=len(todo), unit="img", desc="indexed", file=sys.stderr, dynamic_ncols=True) as progress, \
            ThreadPoolExecutor(concurrency) as pool:
        running = [pool.submit(_index_batch, client, collection, batch, progress, failures) for batch in batches]
        for future in as_completed(running):
            _finished(future.result)
    indexed = len(todo) - len(failures)
    click.echo(f"indexed {indexed}, skipped {len(files) - len(todo)}, failed {len(failures)}", err=True)
    for image_id, code, message in failures[:FAILURES_SHOWN]:
        click.echo(f"  {image_id}: {code}: {message}", err=True)
    if len(failures) > FAILURES_SHOWN:
        click.echo(f"  ... and {len(failures) - FAILURES_SHOWN} more", err=True)
    sys.exit(1 if failures else 0)


def _index_batch(client: Client, collection: str, batch: list[tuple[str, Path]], progress: tqdm,
                 failures: list) -> None:
    """Send one bulk request, then follow its tasks until each has finished, advancing the bar."""
    try:
        submitted = client.index_many(collection, [(image_id, file, None) for image_id, file in batch])
    except ApiError as error:  # the whole request refused (e.g. no valid image in it)
        items = error.details.get("items") or [{"image_id": image_id, "error": None} for image_id, _ in batch]
        for item in items:
            failure = item.get("error") or {"code": error.code, "message": error.message}
            failures.append((item["image_id"], failure["code"], failure["message"]))
        progress.update(len(batch))
        return
    for item in submitted["tasks"]:
        if item["task_id"] is None:
            failures.append((item["image_id"], item["error"]["code"], item["error"]["message"]))
            progress.update(1)
    for item in submitted["tasks"]:
        if item["task_id"] is not None:
            task = client.wait(item["task_id"])
            if task["state"] == "failed":
                failures.append((item["image_id"], task["error"]["code"], task["error"]["message"]))
            progress.update(1)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--collection", "-c", required=True)
@click.option("-k", default=10, show_default=True, help="Matches wanted.")
@click.option("--signals", type=click.Choice(["cnn", "pdq", "both"]), default=None)
@click.option("--expand", type=click.IntRange(0, 10), default=None, help="Query expansion: average the query "
              "with this many of its best matches and search again.")
@click.option("--json", "as_json", is_flag=True, help="Print the task's result as JSON.")
@click.pass_obj
def query(client: Client, image: str, collection: str, k: int, signals: str | None, expand: int | None,
          as_json: bool) -> None:
    """Rank a collection against an image."""
    result = _finished(lambda: client.query(collection, image, k=k, signals=signals, expand=expand))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    _print_matches(result["matches"])
    click.echo(f"verdict: {result['verdict']}")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--collection", "-c", required=True)
@click.option("--allow", "allow_collections", multiple=True, help="An allow-list collection (repeatable).")
@click.option("--signals", type=click.Choice(["cnn", "pdq", "both"]), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check(client: Client, image: str, collection: str, allow_collections: tuple[str, ...], signals: str | None,
          as_json: bool) -> None:
    """Is an image a near-duplicate of anything in a collection? Exit status 0: no, 3: block, 4: allow."""
    result = _finished(lambda: client.check(collection, image, signals=signals,
                                            allow_collections=list(allow_collections) or None))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"verdict: {result['verdict']}")
        for label in ("best_match", "allow_match"):
            if result.get(label):
                _print_matches([result[label]], title=label)
    sys.exit({"none": 0, "block": 3, "allow": 4}[result["verdict"]])


@main.command()
@click.argument("pairs", type=click.File("r"))
@click.option("--precision", default=0.99, show_default=True, help="The precision the threshold must reach.")
@click.option("--collection", "-c", default=None, help="Set the proposed threshold on this collection (--apply).")
@click.option("--apply", is_flag=True, help="PUT the proposed match_threshold on --collection.")
@click.pass_obj
def calibrate(client: Client, pairs, precision: float, collection: str | None, apply: bool) -> None:
    """Propose a match_threshold from labelled pairs: JSON lines of {"score": s, "same": true|false}.

    The lowest threshold whose precision reaches --precision (the most recall it allows);
    bench/quality.py --pairs-out writes such a file from its evaluation.
    """
    rows = [json.loads(line) for line in pairs if line.strip()]
    if not rows or not all(isinstance(row.get("score"), (int, float)) and isinstance(row.get("same"), bool)
                           for row in rows):
        raise click.BadParameter('each line must be {"score": <number>, "same": <true|false>}', param_hint="PAIRS")
    proposal = propose_threshold([row["score"] for row in rows], [row["same"] for row in rows], precision)
    if proposal is None:
        raise Failed(f"no threshold reaches precision {precision} on these {len(rows)} pairs")
    click.echo(json.dumps({"pairs": len(rows), "target_precision": precision, **proposal}))
    if apply:
        if collection is None:
            raise click.UsageError("--apply needs --collection")
        current = _finished(lambda: client.collection(collection))["settings"]
        updated = _finished(lambda: client.set_collection(collection, **{**current,
                                                                         "match_threshold": proposal["threshold"]}))
        click.echo(f"{collection}: match_threshold {current['match_threshold']} -> {updated['settings']['match_threshold']}",
                   err=True)


@main.command()
@click.argument("task_id")
@click.option("--wait", default=0, show_default=True, help="Seconds to wait for it to finish (at most 30).")
@click.pass_obj
def task(client: Client, task_id: str, wait: int) -> None:
    """Show a task as JSON."""
    click.echo(json.dumps(_finished(lambda: client.task(task_id, wait=wait)), indent=2))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def collections(client: Client, as_json: bool) -> None:
    """List the collections, with their sizes."""
    infos = _finished(lambda: [client.collection(name) for name in client.collections()])
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    click.echo(f"{'collection':<32} {'images':>10}  kind   {'threshold':<9}  whitening")
    for info in infos:
        settings = info["settings"]
        click.echo(f"{info['collection']:<32} {info['images']:>10}  {settings['kind']:<6} "
                   f"{settings['match_threshold']:<9}  {_whitening_state(info)}")


def _whitening_state(info: dict) -> str:
    learned = info.get("whitening")
    if not info["settings"].get("whitening"):
        return "off"
    if learned is None:
        return "on, not learned yet"
    return f"on, {learned['dimensions']} dims from {learned['learned_from']} images"


def _print_matches(matches: list[dict], title: str = "rank") -> None:
    click.echo(f"{title:<10} {'score':>8} {'pdq':>4}  near-dup  id")
    for rank, match in enumerate(matches, 1):
        score = "" if match["score"] is None else f"{match['score']:.4f}"
        distance = "" if match.get("pdq_distance") is None else str(match["pdq_distance"])
        near = ",".join(match.get("matched_by") or []) or "-"
        click.echo(f"{rank:<10} {score:>8} {distance:>4}  {near:<8}  {match['id']}")


def _finished(call):
    """Run a client call; API errors and failed tasks become one line on stderr and exit status 2."""
    started = time.monotonic()
    try:
        return call()
    except ApiError as error:
        raise Failed(f"{error.code}: {error.message}") from None
    except TaskFailed as failure:
        raise Failed(str(failure)) from None
    except TimeoutError as error:
        raise Failed(f"{error} ({time.monotonic() - started:.0f} s)") from None
    except requests.RequestException as error:
        url = click.get_current_context().obj.url
        raise Failed(f"cannot reach {url}: {type(error).__name__}") from None


if __name__ == "__main__":
    main()
