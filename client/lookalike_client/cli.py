"""The `lookalike` command line, on top of :mod:`lookalike_client.client`.

    lookalike index photos/ --collection photos        # recursive, resumable, with a progress bar
    lookalike query cat.jpg --collection photos -k 5   # a table, or --json
    lookalike check upload.jpg --collection banned --allow known-good
    lookalike task <task id>
    lookalike collections
    lookalike delete -c photos 2026/cat.jpg            # images by id
    lookalike settings banned --set match_threshold=0.9 --set kind=block
    lookalike drop photos --yes                        # the whole collection
    lookalike calibrate pairs.jsonl --precision 0.99 --collection banned --apply

``--url`` and ``--api-key`` come from flags or LOOKALIKE_API_URL / LOOKALIKE_API_KEY. Every command
takes ``--json`` (its result as JSON on stdout; messages and the progress bar go to stderr).

Exit status: 0 done; 1 the work failed (the service answered an error, a task failed or did not finish
within --timeout, some images were not indexed or deleted, no threshold found); 2 called wrong (click's
usage errors); 3 and 4 a check's verdict, block and allow; 5 the service could not be reached (no
connection, or no answer within --timeout).
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import click
import requests
from tqdm import tqdm

from lookalike_client.calibration import propose_threshold
from lookalike_client.client import DEFAULT_URL, KEY_VARIABLE, URL_VARIABLE, ApiError, Client, TaskFailed

EXIT_FAILED, EXIT_USAGE, EXIT_BLOCK, EXIT_ALLOW, EXIT_UNREACHABLE = 1, 2, 3, 4, 5


class Failed(click.ClickException):
    """The work failed: an error answer, a failed or unfinished task (exit status 1)."""

    exit_code = EXIT_FAILED


class Unreachable(click.ClickException):
    """No answer from the service at all (exit status 5)."""

    exit_code = EXIT_UNREACHABLE


class LookalikeGroup(click.Group):
    """Turns what the client raises into one line on stderr and the exit status it stands for."""

    def invoke(self, context: click.Context):
        started = time.monotonic()
        try:
            return super().invoke(context)
        except ApiError as error:
            raise Failed(f"{error.code}: {error.message}") from None
        except TaskFailed as failure:
            raise Failed(str(failure)) from None
        except TimeoutError as error:
            raise Failed(f"{error} ({time.monotonic() - started:.0f} s)") from None
        except requests.RequestException as error:
            url = context.obj.url if isinstance(context.obj, Client) else context.params.get("url")
            raise Unreachable(f"cannot reach {url}: {type(error).__name__}") from None


def _check_url(context: click.Context, parameter: click.Parameter, url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// address")
    return url


def json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")(command)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
FAILURES_SHOWN = 20


@click.group(cls=LookalikeGroup)
@click.option("--url", envvar=URL_VARIABLE, default=DEFAULT_URL, show_default=True, callback=_check_url,
              help=f"The API's address (or {URL_VARIABLE}).")
@click.option("--api-key", envvar=KEY_VARIABLE, default=None, help=f"An API key (or {KEY_VARIABLE}).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for a request or a task.")
@click.version_option(package_name="lookalike-client", prog_name="lookalike")
@click.pass_context
def main(context: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Index images into Lookalike and ask it what looks alike.

    Exit status: 0 done, 1 the work failed (an error answer, a failed task, images not indexed),
    2 called wrong, 3 and 4 a check's verdict (block, allow), 5 the service could not be reached.
    """
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
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Images per bulk request.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True,
              help="Bulk requests in flight at once.")
@click.option("--no-resume", is_flag=True, help="Index every image, even ids the collection already holds.")
@json_option
@click.pass_obj
def index(client: Client, paths: tuple[str, ...], collection: str, batch_size: int, concurrency: int,
          no_resume: bool, as_json: bool) -> None:
    """Index image files and directories (recursively); ids are their relative paths.

    Exit status 1 when any image was not indexed (each one's error is listed; --json lists them all).
    """
    files = image_files(paths)
    already = set() if no_resume else client.image_ids(collection)
    todo = [(image_id, file) for image_id, file in files if image_id not in already]
    click.echo(f"{len(files)} images found, {len(files) - len(todo)} already indexed, {len(todo)} to index", err=True)
    failures: list[tuple[str, str, str]] = []  # (image id, code, message)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    with tqdm(total=len(todo), unit="img", desc="indexed", file=sys.stderr, dynamic_ncols=True) as progress, \
            ThreadPoolExecutor(concurrency) as pool:
        running = [pool.submit(_index_batch, client, collection, batch, progress, failures) for batch in batches]
        for future in as_completed(running):
            future.result()
    indexed = len(todo) - len(failures)
    click.echo(f"indexed {indexed}, skipped {len(files) - len(todo)}, failed {len(failures)}", err=True)
    shown = 0 if as_json else FAILURES_SHOWN
    for image_id, code, message in failures[:shown]:
        click.echo(f"  {image_id}: {code}: {message}", err=True)
    if len(failures) > shown > 0:
        click.echo(f"  ... and {len(failures) - shown} more", err=True)
    if as_json:
        _echo_json({"collection": collection, "found": len(files), "skipped": len(files) - len(todo),
                    "indexed": indexed, "failed": len(failures),
                    "failures": [{"id": image_id, "code": code, "message": message}
                                 for image_id, code, message in sorted(failures)]})
    sys.exit(EXIT_FAILED if failures else 0)


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
@json_option
@click.pass_obj
def query(client: Client, image: str, collection: str, k: int, signals: str | None, expand: int | None,
          as_json: bool) -> None:
    """Rank a collection against an image."""
    result = client.query(collection, image, k=k, signals=signals, expand=expand)
    if as_json:
        _echo_json(result)
        return
    _print_matches(result["matches"])
    click.echo(_verdict_line(result))


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--collection", "-c", required=True)
@click.option("--allow", "allow_collections", multiple=True, help="An allow-list collection (repeatable).")
@click.option("--signals", type=click.Choice(["cnn", "pdq", "both"]), default=None)
@json_option
@click.pass_obj
def check(client: Client, image: str, collection: str, allow_collections: tuple[str, ...], signals: str | None,
          as_json: bool) -> None:
    """Is an image a near-duplicate of anything in a collection? Exit status 0: no, 3: block, 4: allow."""
    result = client.check(collection, image, signals=signals, allow_collections=list(allow_collections) or None)
    if as_json:
        _echo_json(result)
    else:
        click.echo(_verdict_line(result))
        for label in ("best_match", "allow_match"):
            if result.get(label):
                _print_matches([result[label]], title=label)
    sys.exit({"block": EXIT_BLOCK, "allow": EXIT_ALLOW}.get(result["verdict"], 0))


def _verdict_line(result: dict) -> str:
    """The verdict; a collection nobody configured (no moderation settings) gives none (null)."""
    if result["verdict"] is None:
        return f"verdict: none given (collection not configured; near-duplicate: {_near(result)})"
    return f"verdict: {result['verdict']}"


def _near(result: dict) -> str:
    near = result.get("near_duplicate", bool(result.get("matches")) and result["matches"][0]["near_duplicate"])
    return "yes" if near else "no"


@main.command()
@click.argument("pairs", type=click.File("r"))
@click.option("--precision", default=0.99, show_default=True, help="The precision the threshold must reach.")
@click.option("--collection", "-c", default=None, help="Set the proposed threshold on this collection (--apply).")
@click.option("--apply", is_flag=True, help="PUT the proposed match_threshold on --collection.")
@click.option("--json", "as_json", is_flag=True,
              help="The proposal is always printed as JSON (accepted for uniformity).")
@click.pass_obj
def calibrate(client: Client, pairs, precision: float, collection: str | None, apply: bool, as_json: bool) -> None:
    """Propose a match_threshold from labelled pairs: JSON lines of {"score": s, "same": true|false}.

    The lowest threshold whose precision reaches --precision (the most recall it allows);
    bench/quality.py --pairs-out writes such a file from its evaluation. Exit status 1 when none does.
    """
    if apply and collection is None:
        raise click.UsageError("--apply needs --collection")
    rows = [_pair(line) for line in pairs if line.strip()]
    if not rows or None in rows:
        raise click.BadParameter('each line must be {"score": <number>, "same": <true|false>}', param_hint="PAIRS")
    proposal = propose_threshold([row["score"] for row in rows], [row["same"] for row in rows], precision)
    if proposal is None:
        raise Failed(f"no threshold reaches precision {precision} on these {len(rows)} pairs")
    click.echo(json.dumps({"pairs": len(rows), "target_precision": precision, **proposal}))
    if apply:
        current = client.collection(collection)["settings"]
        updated = client.set_collection(collection, **{**current, "match_threshold": proposal["threshold"]})
        click.echo(f"{collection}: match_threshold {current['match_threshold']} "
                   f"-> {updated['settings']['match_threshold']}", err=True)


def _pair(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if isinstance(row, dict) and isinstance(row.get("score"), (int, float)) and not isinstance(row["score"], bool) \
            and isinstance(row.get("same"), bool):
        return row
    return None


@main.command()
@click.argument("task_id")
@click.option("--wait", type=click.IntRange(0, 30), default=0, show_default=True,
              help="Seconds to wait for it to finish (at most 30).")
@click.option("--json", "as_json", is_flag=True, help="The task is always printed as JSON (accepted for uniformity).")
@click.pass_obj
def task(client: Client, task_id: str, wait: int, as_json: bool) -> None:
    """Show a task as JSON."""
    _echo_json(client.task(task_id, wait=wait))


@main.command()
@json_option
@click.pass_obj
def collections(client: Client, as_json: bool) -> None:
    """List the collections, with their sizes."""
    infos = [client.collection(name) for name in client.collections()]
    if as_json:
        _echo_json(infos)
        return
    click.echo(f"{'collection':<32} {'images':>10}  kind   {'threshold':<9}  whitening")
    for info in infos:
        settings = info["settings"]
        click.echo(f"{info['collection']:<32} {info['images']:>10}  {settings['kind']:<6} "
                   f"{settings['match_threshold']:<9}  {_whitening_state(info)}")


@main.command()
@click.argument("image_ids", nargs=-1, required=True)
@click.option("--collection", "-c", required=True, help="The collection to delete from.")
@json_option
@click.pass_obj
def delete(client: Client, image_ids: tuple[str, ...], collection: str, as_json: bool) -> None:
    """Delete images from a collection by id (as `lookalike index` named them: paths relative to the directory).

    Exit status 1 when any was not deleted (no such image, or another error answer); the others still are.
    """
    deleted, failures = [], []
    for image_id in image_ids:
        try:
            client.delete_image(collection, image_id)
        except ApiError as error:
            failures.append({"id": image_id, "code": error.code, "message": error.message})
            continue
        deleted.append(image_id)
        if not as_json:
            click.echo(f"deleted {image_id}")
    for failure in failures:
        click.echo(f"not deleted {failure['id']}: {failure['code']}: {failure['message']}", err=True)
    if as_json:
        _echo_json({"collection": collection, "deleted": deleted, "failures": failures})
    sys.exit(EXIT_FAILED if failures else 0)


@main.command()
@click.argument("collection")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Change one setting (repeatable); VALUE is JSON (0.9, true, null) or else a string (block). "
                   "Settings not named keep their values.")
@json_option
@click.pass_obj
def settings(client: Client, collection: str, assignments: tuple[str, ...], as_json: bool) -> None:
    """Show a collection's settings, or change some with --set (an admin key's right).

    The settings are those of PUT /v1/collections/{collection} (docs/api.md): match_threshold,
    pdq_max_distance, kind, whitening, group, buckets.
    """
    changes = dict(_assignment(text) for text in assignments)
    if changes:
        try:
            current = client.collection(collection)["settings"]
        except ApiError as error:
            if error.code != "collection_not_found":
                raise
            current = {}  # settings before the collection's first image
        answer = client.set_collection(collection, **{**current, **changes})
    else:
        answer = client.collection(collection)
    shown = {"collection": collection, "settings": answer["settings"]}
    if as_json:
        _echo_json(shown)
        return
    for name, value in shown["settings"].items():
        click.echo(f"{name:<18} {json.dumps(value)}")


def _assignment(text: str) -> tuple[str, object]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--set")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


@main.command()
@click.argument("collection")
@click.option("--yes", "-y", is_flag=True, help="Drop without asking.")
@json_option
@click.pass_obj
def drop(client: Client, collection: str, yes: bool, as_json: bool) -> None:
    """Delete a whole collection: its images, vectors, thumbnails and settings (an admin key's right).

    Asks first (on stderr) unless --yes; answering no leaves it as it is, with exit status 1.
    """
    images = client.collection(collection)["images"]  # 404 collection_not_found before asking anything
    if not yes and not click.confirm(f"Drop collection {collection} and its {images} images?", err=True):
        raise Failed(f"{collection} not dropped")
    answer = client.drop_collection(collection)
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"dropped {collection} ({answer['images']} images)")


def _echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2))


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


if __name__ == "__main__":
    main()
