"""The `lookalike` command line, on top of :mod:`lookalike_client.client`.

    lookalike index photos/ --collection photos        # recursive, resumable, with a progress bar
    lookalike query cat.jpg --collection photos -k 5   # a table, or --json
    lookalike check upload.jpg --collection banned --allow known-good
    lookalike check --hash f8f8f0cc... --collection banned   # a PDQ hash instead of an image
    lookalike bank-hashes shared-list.csv --collection banned  # a file of PDQ hashes (JSON lines or CSV)
    lookalike task <task id>
    lookalike collections
    lookalike delete -c photos 2026/cat.jpg            # images by id
    lookalike settings banned --set match_threshold=0.9 --set kind=block
    lookalike drop photos --yes                        # the whole collection
    lookalike calibrate pairs.jsonl --precision 0.99 --collection banned --apply

``--url`` and ``--api-key`` come from flags or LOOKALIKE_API_URL / LOOKALIKE_API_KEY. Every command
takes ``--json`` (its result as JSON on stdout; messages and the progress bar go to stderr).

Exit status: 0 done (check: no near-duplicate); 1 the work failed (the service answered an error, a task
failed or did not finish within --timeout, some images were not indexed or deleted, a hash was refused, no
threshold found); 2 called wrong (click's usage errors); 3 and 4 a check's verdict, block and allow; 5 the
service could not be reached (no connection, or no answer within --timeout); 6 check: a near-duplicate was
found but the collection gives no verdict (its moderation settings were never set) -- fail closed, so that
``lookalike check ... || reject`` never lets a near-duplicate through.
"""

import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import click
import requests
from tqdm import tqdm

from lookalike_client.calibration import propose_threshold
from lookalike_client.client import (
    DEFAULT_URL,
    DEFAULT_WAIT_SECONDS,
    KEY_VARIABLE,
    MAX_ITEMS_PER_REQUEST,
    URL_VARIABLE,
    ApiError,
    Client,
    TaskFailed,
)

EXIT_FAILED, EXIT_USAGE, EXIT_BLOCK, EXIT_ALLOW, EXIT_UNREACHABLE, EXIT_UNCONFIGURED = 1, 2, 3, 4, 5, 6


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

    \b
    Exit status:
      0  done (check: no near-duplicate)
      1  the work failed (an error answer, a failed task, images not indexed, a hash refused)
      2  called wrong
      3  check: a near-duplicate in a block collection
      4  check: a near-duplicate in an allow collection
      5  the service could not be reached
      6  check: a near-duplicate, but the collection has no moderation settings (no verdict)
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


def hash_options(command):
    """IMAGE or --hash (with --hash-quality), and --wait: the query inputs of `query` and `check`."""
    command = click.option("--wait", type=click.IntRange(0, 30), default=DEFAULT_WAIT_SECONDS, show_default=True,
                           help="Seconds the service may hold its answer until the task finishes (one round trip); "
                                "0: poll for the result instead.")(command)
    command = click.option("--hash-quality", type=click.IntRange(0, 100), default=None,
                           help="The --hash's PDQ quality, 0-100 (the service's default: 100).")(command)
    command = click.option("--hash", "pdq_hash", metavar="HEX", default=None,
                           help="A PDQ hash (64 hex digits) instead of IMAGE: searched by PDQ alone.")(command)
    return click.argument("image", type=click.Path(exists=True, dir_okay=False), required=False)(command)


def _one_input(image: str | None, pdq_hash: str | None, hash_quality: int | None) -> None:
    if (image is None) == (pdq_hash is None):
        raise click.UsageError("give exactly one of IMAGE and --hash")
    if hash_quality is not None and pdq_hash is None:
        raise click.UsageError("--hash-quality goes with --hash")


@main.command()
@hash_options
@click.option("--collection", "-c", required=True)
@click.option("-k", default=10, show_default=True, help="Matches wanted.")
@click.option("--signals", type=click.Choice(["cnn", "pdq", "both"]), default=None)
@click.option("--expand", type=click.IntRange(0, 10), default=None, help="Query expansion: average the query "
              "with this many of its best matches and search again.")
@json_option
@click.pass_obj
def query(client: Client, image: str | None, pdq_hash: str | None, hash_quality: int | None, wait: int,
          collection: str, k: int, signals: str | None, expand: int | None, as_json: bool) -> None:
    """Rank a collection against an image (IMAGE) or a PDQ hash (--hash)."""
    _one_input(image, pdq_hash, hash_quality)
    result = client.query(collection, image, hash=pdq_hash, hash_quality=hash_quality, k=k, signals=signals,
                          expand=expand, wait=wait)
    if as_json:
        _echo_json(result)
        return
    _print_matches(result["matches"])
    click.echo(_verdict_line(result))


@main.command()
@hash_options
@click.option("--collection", "-c", required=True)
@click.option("--allow", "allow_collections", multiple=True, help="An allow-list collection (repeatable).")
@click.option("--signals", type=click.Choice(["cnn", "pdq", "both"]), default=None)
@json_option
@click.pass_obj
def check(client: Client, image: str | None, pdq_hash: str | None, hash_quality: int | None, wait: int,
          collection: str, allow_collections: tuple[str, ...], signals: str | None, as_json: bool) -> None:
    """Is an image (IMAGE) or a PDQ hash (--hash) a near-duplicate of anything in a collection?

    \b
    Exit status:
      0  no near-duplicate
      3  a near-duplicate; the collection is a block list (verdict block)
      4  a near-duplicate; the collection is an allow list, or an --allow collection
         holds it too (verdict allow)
      6  a near-duplicate, but the collection gives no verdict: its moderation settings
         were never set (lookalike settings COLLECTION --set kind=block)
      1  the check failed; 5 the service could not be reached
    A gate such as `lookalike check ... || reject` lets through only exit status 0.
    """
    _one_input(image, pdq_hash, hash_quality)
    result = client.check(collection, image, hash=pdq_hash, hash_quality=hash_quality, signals=signals,
                          allow_collections=list(allow_collections) or None, wait=wait)
    if as_json:
        _echo_json(result)
    else:
        click.echo(_verdict_line(result))
        for label in ("best_match", "allow_match"):
            if result.get(label):
                _print_matches([result[label]], title=label)
    sys.exit(_check_exit_status(result, collection))


def _check_exit_status(result: dict, collection: str) -> int:
    """A check's exit status, failing closed: 0 only when nothing here is a near-duplicate."""
    verdict = result["verdict"]
    if verdict in ("block", "allow"):
        return {"block": EXIT_BLOCK, "allow": EXIT_ALLOW}[verdict]
    if verdict is None and _near(result) == "yes":
        click.echo(f"near-duplicate found, but collection {collection} has no moderation settings (no verdict): "
                   f"set them with `lookalike settings {collection} --set kind=block` (or kind=allow)", err=True)
        return EXIT_UNCONFIGURED
    if verdict in ("none", None):
        return 0
    raise Failed(f"the service gave a verdict this client does not know: {verdict!r}")


def _verdict_line(result: dict) -> str:
    """The verdict; a collection nobody configured (no moderation settings) gives none (null)."""
    if result["verdict"] is None:
        return f"verdict: none given (collection not configured; near-duplicate: {_near(result)})"
    return f"verdict: {result['verdict']}"


def _near(result: dict) -> str:
    if "near_duplicate" in result:  # a check's result
        near = result["near_duplicate"]
    elif "matches" in result:  # a query's: the best match
        near = bool(result["matches"]) and result["matches"][0].get("near_duplicate")
    else:
        near = bool(result.get("best_match") and result["best_match"].get("near_duplicate"))
    return "yes" if near else "no"


@main.command("bank-hashes")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))  # a BOM (a spreadsheet's export): not an id's
@click.option("--collection", "-c", required=True, help="The collection to bank the hashes in.")
@click.option("--batch-size", type=click.IntRange(1, MAX_ITEMS_PER_REQUEST), default=MAX_ITEMS_PER_REQUEST,
              show_default=True, help="Hashes per request.")
@json_option
@click.pass_obj
def bank_hashes(client: Client, file, collection: str, batch_size: int, as_json: bool) -> None:
    """Bank PDQ hashes without their images (a shared hash list) from FILE ('-': stdin), one hash a line.

    \b
    Each line is either
      JSON:  {"id": "list/2291", "hash": "<64 hex digits>", "quality": 90, "metadata": {...}}
      CSV:   list/2291,<64 hex digits>[,quality]   (a tab instead of the comma: TSV)
    ("quality" 0-100, 100 when left out; "metadata" JSON lines only). CSV fields may be
    quoted ("a,b",<hash>); a first line whose second field is "hash" is a header and
    skipped, and so are blank lines.

    A file that cannot be read so is refused (exit status 2) before anything is sent. The
    service checks each hash, id and metadata: a refused one stops the banking with exit
    status 1, naming its line and id; the requests before it (--batch-size hashes each)
    stay banked. Ids already in the collection are replaced.
    """
    lines, items, header_possible = [], [], True
    for number, line in enumerate(file, 1):
        item = _hash_line(line, number, header_possible)
        header_possible = header_possible and not line.strip()
        if item is not None:
            lines.append(number)
            items.append(item)
    try:
        totals = client.bank_hashes(collection, items, batch_size=batch_size)
    except ApiError as error:
        banked = error.details.get("banked") or {"stored": 0, "replaced": 0, "write_token": None}
        position = error.details.get("item")
        refused = {"code": error.code, "message": error.message}
        if isinstance(position, int) and not isinstance(position, bool) and 0 <= position < len(items):
            refused = {"item": position, "line": lines[position], "id": items[position].get("id"), **refused}
            click.echo(f"refused line {refused['line']} (item {position}, id {refused['id']!r}): "
                       f"{error.code}: {error.message}", err=True)
        else:  # the request as a whole (too many items, the store full, ...)
            click.echo(f"refused: {error.code}: {error.message}", err=True)
        click.echo(f"banked {banked['stored']} of {len(items)} hashes before the refusal (replaced "
                   f"{banked['replaced']}); the rest were not banked", err=True)
        if as_json:
            _echo_json({"collection": collection, **banked, "refused": refused})
        sys.exit(EXIT_FAILED)
    if as_json:
        _echo_json(totals)
    else:
        click.echo(f"banked {totals['stored']} hashes in {totals['collection']} (replaced {totals['replaced']})")


def _hash_line(line: str, number: int, first: bool) -> dict | None:
    """One line of a hash file as an item of bank_hashes (None: blank, or the first line a CSV header)."""
    text = line.strip("\r\n")
    if not text.strip():
        return None
    if text.lstrip().startswith("{"):
        try:
            item = json.loads(text)
        except ValueError as error:
            raise click.BadParameter(f"line {number}: not JSON ({error})", param_hint="FILE") from None
        if not isinstance(item, dict):
            raise click.BadParameter(f"line {number}: not a JSON object", param_hint="FILE")
        return item
    fields = next(csv.reader([text], delimiter="\t" if "\t" in text else ","))
    if len(fields) not in (2, 3):
        raise click.BadParameter(f"line {number}: {len(fields)} fields; a CSV line is id,hash[,quality]",
                                 param_hint="FILE")
    if first and fields[1].strip().lower() == "hash":
        return None  # a header: id,hash,quality
    item: dict = {"id": fields[0], "hash": fields[1].strip()}
    if len(fields) == 3 and fields[2].strip():
        quality = fields[2].strip()
        item["quality"] = int(quality) if quality.isdigit() else quality  # the service refuses what is not 0-100
    return item


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
