"""Retrieval quality: a copy-detection evaluation in the style of INRIA Copydays, in one run.

    make bench                      # or: .venv/bin/python bench/quality.py [--json] [--weights PATH]

Data (all shipped inside scikit-image, so nothing is downloaded):
- base images: the bundled photographs; those at least 400 px on both sides are cut into
  four quadrants, each its own base (siblings share colour and texture: a harder test);
- distractors, indexed beside the bases: 100 of the LFW faces, the synthetic images;
- negatives, never indexed, queried to measure false positives: the other 100 faces.

Each base is queried through transformed copies in nine families: crop (10-50% removed),
JPEG (quality 75, 30, 10), downscale (to 50% and 20%), rotation (+-10 degrees), horizontal
flip, brightness, contrast, a text overlay, blur. Reported per family: recall@1 and mAP
(one relevant image per query, so AP = 1 / rank of the original).

Compared on the same data and the same weights, from shared forward passes:
- Lookalike's descriptor options: pooling MAC / SPoC / GeM / R-MAC of VGG16's last conv
  block; input squashed to 224x224, or aspect kept (longest side 224) either as it is
  (one pass per image) or padded into 224x224 (the service's ``pad``, batched); and the
  service's options on top of its default: two scales (``LOOKALIKE_SCALES=224,160``),
  PCA-whitening learned from the indexed images (a collection's ``whitening``), query
  expansion over 1-3 matches (a query's ``expand``);
- the original write-up's approach: the flattened 7x7x512 map of a /255-scaled input,
  Euclidean distance;
- PDQ hashes (Hamming distance), and the service's combined check (CNN and PDQ).

Also: the precision-recall curve of the near-duplicate threshold for the default
descriptor, plain and whitened (top-1 score of each query, negatives included); check recall per family
(the best match is the original and is called a near-duplicate) for the CNN at the
threshold reaching 99% precision, for PDQ, and for both as the service combines them; query
recall per family (the first match is the original) for the CNN alone, PDQ alone and both,
each answer ranked by the service's own function (worker/ranking.py);
and ``--pairs-out`` writes the labelled pairs that ``lookalike calibrate`` turns into a
proposed ``match_threshold`` (``--whitening``: the whitened default's pairs).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import median_seconds, report  # noqa: E402
from shared.calibration import precision_recall_curve, propose_threshold  # noqa: E402
from worker import descriptors  # noqa: E402
from shared.collection_settings import DEFAULT_COLLECTION_SETTINGS  # noqa: E402
from shared.settings import Settings  # noqa: E402
from worker.pdq import compute_pdq  # noqa: E402
from worker.ranking import ranked  # noqa: E402

DEFAULT_DESCRIPTOR = (f"{'pad224' if Settings.model_fields['input_mode'].default == 'pad' else 'squash224'}-"
                      f"{Settings.model_fields['pooling'].default}")

SEED = 0
FACES_INDEXED = 100
QUADRANT_MIN_SIDE = 400
PDQ_MAX_DISTANCE, PDQ_MIN_QUALITY = 31, 50
TARGET_PRECISION = 0.99


# --- The data ----------------------------------------------------------------------------------


def _bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def dataset() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(bases, distractors, negatives)``: name -> BGR uint8 pixels."""
    import skimage.data as data

    photographs = {
        "astronaut": data.astronaut(), "brick": data.brick(), "camera": data.camera(), "cell": data.cell(),
        "chelsea": data.chelsea(), "clock": data.clock(), "coffee": data.coffee(), "coins": data.coins(),
        "grass": data.grass(), "gravel": data.gravel(), "hubble": data.hubble_deep_field(),
        "ihc": data.immunohistochemistry(), "moon": data.moon(), "page": data.page(), "retina": data.retina(),
        "rocket": data.rocket(), "text": data.text(), "motorcycle": data.stereo_motorcycle()[0],
    }
    bases = {}
    for name, image in photographs.items():
        pixels = _bgr(image)
        height, width = pixels.shape[:2]
        if min(height, width) >= QUADRANT_MIN_SIDE:
            half_h, half_w = height // 2, width // 2
            for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
                bases[f"{name}-q{2 * row + col}"] = pixels[row * half_h:(row + 1) * half_h,
                                                           col * half_w:(col + 1) * half_w]
        else:
            bases[name] = pixels
    faces = [cv2.resize(_bgr(face), (100, 100), interpolation=cv2.INTER_CUBIC) for face in data.lfw_subset()]
    distractors = {f"face-{n}": face for n, face in enumerate(faces[:FACES_INDEXED])}
    distractors.update({"colorwheel": _bgr(data.colorwheel()), "logo": _bgr(data.logo()),
                        "phantom": _bgr(data.shepp_logan_phantom()),
                        "horse": _bgr(data.horse().astype(np.uint8) * 255)})
    negatives = {f"face-{n}": face for n, face in enumerate(faces[FACES_INDEXED:], FACES_INDEXED)}
    return bases, distractors, negatives


# --- Transformations, by family ---------------------------------------------------------------


def crop(pixels: np.ndarray, keep_area: float, anchor: str = "centre") -> np.ndarray:
    height, width = pixels.shape[:2]
    scale = np.sqrt(keep_area)
    new_h, new_w = max(8, int(height * scale)), max(8, int(width * scale))
    top, left = {"centre": ((height - new_h) // 2, (width - new_w) // 2), "corner": (0, 0)}[anchor]
    return pixels[top:top + new_h, left:left + new_w]


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def downscale(pixels: np.ndarray, factor: float) -> np.ndarray:
    height, width = pixels.shape[:2]
    return cv2.resize(pixels, (max(8, int(width * factor)), max(8, int(height * factor))), interpolation=cv2.INTER_AREA)


def rotate(pixels: np.ndarray, degrees: float) -> np.ndarray:
    height, width = pixels.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(pixels, matrix, (width, height), borderMode=cv2.BORDER_CONSTANT)


def brightness(pixels: np.ndarray, shift: int) -> np.ndarray:
    return cv2.convertScaleAbs(pixels, alpha=1.0, beta=shift)


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    mean = pixels.mean()
    return np.clip((pixels.astype(np.float32) - mean) * factor + mean, 0, 255).astype(np.uint8)


def text_overlay(pixels: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    height, width = out.shape[:2]
    scale = width / 300
    for colour, thickness in (((0, 0, 0), 6), ((255, 255, 255), 2)):
        cv2.putText(out, "LOOKALIKE 2026", (int(width * 0.05), int(height * 0.55)), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, colour, max(1, int(thickness * scale)), cv2.LINE_AA)
    return out


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(pixels, (0, 0), sigma)


TRANSFORMS = {
    "crop": [("keep90", lambda p: crop(p, 0.9)), ("keep70", lambda p: crop(p, 0.7)), ("keep50", lambda p: crop(p, 0.5)),
             ("keep70-corner", lambda p: crop(p, 0.7, "corner"))],
    "jpeg": [("q75", lambda p: jpeg(p, 75)), ("q30", lambda p: jpeg(p, 30)), ("q10", lambda p: jpeg(p, 10))],
    "downscale": [("50%", lambda p: downscale(p, 0.5)), ("20%", lambda p: downscale(p, 0.2))],
    "rotate": [("+10", lambda p: rotate(p, 10)), ("-10", lambda p: rotate(p, -10))],
    "flip": [("horizontal", lambda p: cv2.flip(p, 1))],
    "brightness": [("+50", lambda p: brightness(p, 50)), ("-50", lambda p: brightness(p, -50))],
    "contrast": [("x1.6", lambda p: contrast(p, 1.6)), ("x0.5", lambda p: contrast(p, 0.5))],
    "text": [("overlay", text_overlay)],
    "blur": [("sigma2", lambda p: blur(p, 2)), ("sigma5", lambda p: blur(p, 5))],
}


# --- Features --------------------------------------------------------------------------------


class Features:
    """VGG16's last conv block for any input, with the weights the service would use."""

    def __init__(self, weights: str):
        import keras
        import tensorflow as tf

        from worker.extractor import FeatureExtractor
        from worker.weights import resolve_weights

        service = FeatureExtractor(resolve_weights(weights, SEED), seed=SEED)  # the worker's own model and weights
        self.weights_label = service.weights.label
        self.model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
        self.model.set_weights(service.model.get_weights())  # pooling has no weights: the same conv stack
        self._forward = tf.function(lambda batch: self.model(batch, training=False), reduce_retracing=True)
        self._preprocess = keras.applications.vgg16.preprocess_input

    def maps(self, images: list[np.ndarray], size: tuple[int, int] | None, scaling: str = "vgg") -> list[np.ndarray]:
        """Feature maps of each image: squashed to ``size`` (batched), or as given (one at a time).

        ``scaling``: ``vgg`` (the service's: BGR, ImageNet means subtracted) or ``unit`` (RGB / 255,
        the write-up's).
        """
        prepared = [self._prepare(image, size, scaling) for image in images]
        if size is None:
            return [self._forward(batch[None]).numpy()[0] for batch in prepared]
        out = []
        for start in range(0, len(prepared), 32):
            out.extend(self._forward(np.stack(prepared[start:start + 32])).numpy())
        return out

    def _prepare(self, pixels: np.ndarray, size: tuple[int, int] | None, scaling: str) -> np.ndarray:
        if size is not None:
            shrinking = pixels.shape[0] * pixels.shape[1] > size[0] * size[1]
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        rgb = pixels[..., ::-1].astype(np.float32)
        return rgb / 255.0 if scaling == "unit" else self._preprocess(rgb)


def padded(features: "Features", images: list[np.ndarray], longest: int = 224) -> list[np.ndarray]:
    """The service's ``pad`` input: aspect kept with the longest side ``longest``, padded into 224x224 with
    the mean colour (zeros after preprocessing), batched; each map cut to the cells the image covers."""
    from worker.extractor import pad_to_square

    prepared = [pad_to_square(image, features._preprocess, longest) for image in images]
    out = []
    for start in range(0, len(prepared), 32):
        chunk = prepared[start:start + 32]
        maps = features._forward(np.stack([model_input for model_input, _ in chunk])).numpy()
        out.extend(m[:rows, :cols] for m, (_, (rows, cols)) in zip(maps, chunk))
    return out


def aspect_size(pixels: np.ndarray, longest: int = 224, shortest: int = 32) -> np.ndarray:
    """The image with its aspect ratio kept, longest side ``longest`` (and no side under ``shortest``)."""
    height, width = pixels.shape[:2]
    scale = longest / max(height, width)
    size = (max(shortest, round(width * scale)), max(shortest, round(height * scale)))
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# --- What the options cost ------------------------------------------------------------------------


def measure_costs(weights: str, images: list[np.ndarray], repeats: int = 3) -> dict:
    """Side by side in one process: the service's extractor at one scale and at two (images/s through
    ``FeatureExtractor.extract``, batched as a worker batches), and learning and applying a whitening."""
    from worker.extractor import FeatureExtractor
    from worker.weights import resolve_weights

    source = resolve_weights(weights, SEED)
    pooling, input_mode = Settings.model_fields["pooling"].default, Settings.model_fields["input_mode"].default
    rates = {}
    for scales in ((224,), (224, 160)):
        extractor = FeatureExtractor(source, seed=SEED, pooling=pooling, input_mode=input_mode, scales=scales)
        extractor.extract(images)  # warm-up
        seconds = median_seconds(lambda extractor=extractor: extractor.extract(images), repeats)
        rates["+".join(map(str, scales))] = len(images) / seconds
    sample = descriptors.l2_normalise(np.random.default_rng(SEED).standard_normal((50_000, 512)).astype(np.float32))
    learn_seconds = median_seconds(lambda: descriptors.Whitening.learn(sample), repeats)
    whitening = descriptors.Whitening.learn(sample)
    query = sample[:1]
    apply_seconds = median_seconds(lambda: [whitening.apply(query) for _ in range(1000)], repeats) / 1000
    return {"extract_images_per_second": {scales: round(rate, 2) for scales, rate in rates.items()},
            "two_scales_over_one": round(rates["224+160"] / rates["224"], 3),
            "whitening_learn_50k_seconds": round(learn_seconds, 3),
            "whitening_apply_per_query_us": round(1e6 * apply_seconds, 1)}


# --- Evaluation ------------------------------------------------------------------------------


def ranks(similarity: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true match; ties count against it (conservative)."""
    true_scores = similarity[np.arange(len(truth)), truth]
    others = similarity.copy()
    others[np.arange(len(truth)), truth] = -np.inf
    return 1 + (others >= true_scores[:, None]).sum(axis=1)


def by_family(query_ranks: np.ndarray, families: list[str]) -> dict:
    out = {}
    families_array = np.array(families)
    for family in TRANSFORMS:
        chosen = query_ranks[families_array == family]
        out[family] = {"recall@1": round(float((chosen == 1).mean()), 4), "mAP": round(float((1 / chosen).mean()), 4)}
    out["mean"] = {metric: round(float(np.mean([out[family][metric] for family in TRANSFORMS])), 4)
                   for metric in ("recall@1", "mAP")}
    return out


def hamming_matrix(queries: list[bytes], database: list[bytes]) -> np.ndarray:
    q = np.stack([np.frombuffer(bits, np.uint8) for bits in queries])
    d = np.stack([np.frombuffer(bits, np.uint8) for bits in database])
    return np.stack([np.bitwise_count(row[None] ^ d).sum(axis=1) for row in q]).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike retrieval-quality evaluation")
    parser.add_argument("--weights", default="random", help="random (seeded), imagenet, or a weights file")
    parser.add_argument("--max-bases", type=int, default=0, help="evaluate on the first N bases only (quick runs)")
    parser.add_argument("--pairs-out", type=Path, help="write labelled (score, same) pairs for `lookalike calibrate`")
    parser.add_argument("--whitening", action="store_true",
                        help="--pairs-out of the default descriptor whitened (a collection with whitening on)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()

    bases, distractors, negatives = dataset()
    if args.max_bases:
        bases = dict(list(bases.items())[: args.max_bases])
    base_names = list(bases)
    indexed = [*bases.values(), *distractors.values()]
    queries, truth, families = [], [], []
    for number, pixels in enumerate(bases.values()):
        for family, variants in TRANSFORMS.items():
            for _, transform in variants:
                queries.append(transform(pixels))
                truth.append(number)
                families.append(family)
    negative_images = list(negatives.values())
    everything = indexed + queries + negative_images
    n_indexed, n_queries = len(indexed), len(queries)

    features = Features(args.weights)
    squash = features.maps(everything, (224, 224))
    aspect = features.maps([aspect_size(image) for image in everything], None)
    pad = padded(features, everything)
    pad_small = padded(features, everything, 160)
    writeup = features.maps(everything, (224, 224), scaling="unit")

    def split(vectors: np.ndarray):
        return vectors[:n_indexed], vectors[n_indexed:n_indexed + n_queries], vectors[n_indexed + n_queries:]

    results, stacked = {}, {}
    truth_array = np.array(truth)

    def evaluate(name: str, vectors: np.ndarray, similarity=None) -> None:
        database, query_vectors, _ = split(vectors)
        stacked[name] = vectors
        similarity = query_vectors @ database.T if similarity is None else similarity
        results[name] = by_family(ranks(similarity, truth_array), families)

    squash_maps = np.stack(squash)
    for pooling in descriptors.POOLINGS:
        evaluate(f"squash224-{pooling}", descriptors.pool(squash_maps, pooling))
    for pooling in descriptors.POOLINGS:
        evaluate(f"aspect224-{pooling}", np.concatenate([descriptors.pool(m[None], pooling) for m in aspect]))
        evaluate(f"pad224-{pooling}", np.concatenate([descriptors.pool(m[None], pooling) for m in pad]))
    best_plain = max(results, key=lambda name: results[name]["mean"]["recall@1"])

    # The service's options, on its default descriptor: as a collection's whitening, a query's
    # expand and LOOKALIKE_SCALES=224,160 compute them (worker.descriptors, worker.extractor).
    default = DEFAULT_DESCRIPTOR
    indexed_vectors = split(stacked[default])[0]
    evaluate(f"{default} + whitening", descriptors.Whitening.learn(indexed_vectors).apply(stacked[default]))
    for shrinkage in (0.0, 0.1, 1.0):  # around the service's (descriptors.WHITENING_SHRINKAGE)
        evaluate(f"{default} + whitening with shrinkage {shrinkage}",
                 descriptors.Whitening.learn(indexed_vectors, shrinkage=shrinkage).apply(stacked[default]))
    for count in (100, 50, 20):  # a collection that has just reached (or not yet) the minimum
        subset = indexed_vectors[np.random.default_rng(SEED).permutation(len(indexed_vectors))[:count]]
        evaluate(f"{default} + whitening learned from {count} images",
                 descriptors.Whitening.learn(subset).apply(stacked[default]))
    database, query_vectors, _ = split(stacked[default])
    for top in (1, 2, 3):
        expanded = descriptors.expand_queries(query_vectors, database, top=top)
        evaluate(f"{default} + query expansion {top}", stacked[default], expanded @ database.T)
    for pooling in descriptors.POOLINGS:
        small = np.concatenate([descriptors.pool(m[None], pooling) for m in pad_small])
        evaluate(f"pad224+160-{pooling}", descriptors.l2_normalise(stacked[f"pad224-{pooling}"] + small))
    multiscale = f"pad224+160-{Settings.model_fields['pooling'].default}"
    evaluate(f"{multiscale} + whitening",
             descriptors.Whitening.learn(split(stacked[multiscale])[0]).apply(stacked[multiscale]))

    # References: the write-up's flattened map with Euclidean distance, and PDQ.
    flat = np.stack([m.reshape(-1) for m in writeup]).astype(np.float32)
    flat_db, flat_q, _ = split(flat)
    distances = (flat_q**2).sum(1)[:, None] + (flat_db**2).sum(1)[None] - 2 * flat_q @ flat_db.T
    results["reference: write-up (7x7x512 /255, Euclidean)"] = by_family(ranks(-distances, truth_array), families)
    hashes = [compute_pdq(image) for image in everything[:n_indexed + n_queries]]  # negatives: CNN threshold only
    hash_db, hash_q = hashes[:n_indexed], hashes[n_indexed:]
    hamming = hamming_matrix([h.bits for h in hash_q], [h.bits for h in hash_db])
    results["reference: PDQ (Hamming)"] = by_family(ranks(-hamming, truth_array), families)

    # The service's default descriptor (LOOKALIKE_POOLING, LOOKALIKE_INPUT_MODE), whitened with --whitening.
    # Checks, as the service makes them: is the best match the original, and called a near-duplicate?
    # CNN alone at the threshold reaching the target precision, PDQ alone (usable hashes within 31
    # bits), and both, ordered as worker.tasks orders them: by both signals, then by PDQ, then by the
    # CNN alone. For the default descriptor, plain and whitened.
    usable_db = np.array([h.quality >= PDQ_MIN_QUALITY for h in hash_db])
    usable_q = np.array([h.quality >= PDQ_MIN_QUALITY for h in hash_q])
    pdq_hit = (hamming <= PDQ_MAX_DISTANCE) & usable_db[None] & usable_q[:, None]
    rows = np.arange(len(truth_array))

    def check_recall(order_key: np.ndarray, hit: np.ndarray) -> dict:
        best = np.argmax(order_key, axis=1)  # ties: the first index, no credit for luck
        correct = (best == truth_array) & hit[rows, best]
        return by_family(np.where(correct, 1, 2), families)  # rank 1 = a right, near-duplicate answer

    def service_answers(cnn_similarity: np.ndarray, threshold: float | None, signals: tuple[str, ...],
                        k: int = 10) -> list[list[dict]]:
        """Each query's answer as the service gives it (worker/ranking.py), from the candidates a search would
        offer: the CNN's top k (with their hashes' distances) and the k nearest usable hashes within distance."""
        settings = {"match_threshold": np.inf if threshold is None else threshold, "pdq_max_distance": PDQ_MAX_DISTANCE}
        def candidate(row: int, column: int) -> dict:
            usable = usable_q[row] and usable_db[column]
            return {"id": int(column), "score": float(cnn_similarity[row, column]) if "cnn" in signals else None,
                    "pdq_distance": int(hamming[row, column]) if "pdq" in signals and usable else None, "metadata": {}}

        answers = []
        for row in range(len(truth_array)):
            found = {"cnn": [], "pdq": []}
            if "cnn" in signals:
                found["cnn"] = [candidate(row, column)
                                for column in np.argsort(-cnn_similarity[row], kind="stable")[:k]]
            if "pdq" in signals:
                within = np.flatnonzero(pdq_hit[row])
                found["pdq"] = [candidate(row, column)
                                for column in within[np.argsort(hamming[row, within], kind="stable")][:k]]
            answers.append(ranked(found, signals, settings, k, None))
        return answers

    def answer_recall(answers: list[list[dict]], near_duplicate: bool) -> dict:
        """recall@1 by family: the first match is the original (for a check, also called a near-duplicate)."""
        correct = np.array([bool(answer) and answer[0]["id"] == truth
                            and (answer[0]["near_duplicate"] or not near_duplicate)
                            for answer, truth in zip(answers, truth_array)])
        return by_family(np.where(correct, 1, 2), families)

    checks = {"check by PDQ (<= 31 bits, quality >= 50)": check_recall(np.where(pdq_hit, -hamming, -np.inf), pdq_hit)}
    # Queries as the service answers them, by signal: the CNN alone, PDQ alone, and both (the default).
    query_recall = {}
    curves, thresholds, pairs = {}, {}, {}
    for name in (default, f"{default} + whitening"):
        db, q, neg = split(stacked[name])
        cnn_similarity = q @ db.T
        top_scores = np.concatenate([cnn_similarity.max(axis=1), (neg @ db.T).max(axis=1)])
        top_correct = np.concatenate([cnn_similarity.argmax(axis=1) == truth_array, np.zeros(len(neg), bool)])
        pairs[name] = list(zip(top_scores, top_correct))
        curves[name] = precision_recall_curve(top_scores, top_correct, positives=len(q))
        threshold = propose_threshold(top_scores, top_correct, TARGET_PRECISION)
        thresholds[name] = {"target": TARGET_PRECISION, **(threshold or {"threshold": None})}
        cnn_hit = cnn_similarity >= (threshold["threshold"] if threshold else np.inf)
        trust = np.where(cnn_hit & pdq_hit, 3, np.where(pdq_hit, 2, np.where(cnn_hit, 1, 0)))
        checks[f"check by CNN ({name}, threshold {thresholds[name]['threshold']})"] = check_recall(cnn_similarity,
                                                                                                  cnn_hit)
        both = service_answers(cnn_similarity, threshold and threshold["threshold"], ("cnn", "pdq"))
        checks[f"check by both ({name})"] = answer_recall(both, near_duplicate=True)
        checks[f"check by both, the earlier order by trust ({name})"] = check_recall(trust * 10.0 + cnn_similarity,
                                                                                     cnn_hit | pdq_hit)
        query_recall[f"query by CNN ({name})"] = answer_recall(
            service_answers(cnn_similarity, None, ("cnn",)), near_duplicate=False)
        query_recall[f"query by both ({name})"] = answer_recall(both, near_duplicate=False)
        query_recall[f"query by both, the earlier order by trust ({name})"] = by_family(
            np.where(np.argmax(trust * 10.0 + cnn_similarity, axis=1) == truth_array, 1, 2), families)
        # The same at the collection's default match_threshold (what a collection nobody calibrated uses): with
        # random weights every CNN score passes it, so the order by trust ranks PDQ's hits by CNN score.
        default_threshold = DEFAULT_COLLECTION_SETTINGS["match_threshold"]
        near_by_default = cnn_similarity >= default_threshold
        trust_by_default = np.where(near_by_default & pdq_hit, 3, np.where(pdq_hit, 2, np.where(near_by_default, 1, 0)))
        query_recall[f"query by both, match_threshold {default_threshold} ({name})"] = answer_recall(
            service_answers(cnn_similarity, default_threshold, ("cnn", "pdq")), near_duplicate=False)
        query_recall[f"query by both, match_threshold {default_threshold}, the earlier order by trust ({name})"] = \
            by_family(np.where(np.argmax(trust_by_default * 10.0 + cnn_similarity, axis=1) == truth_array, 1, 2),
                      families)
    query_recall["query by PDQ (<= 31 bits, quality >= 50)"] = answer_recall(
        service_answers(np.zeros_like(hamming), None, ("pdq",)), near_duplicate=False)
    query_recall_at_1 = {name: {family: result[family]["recall@1"] for family in (*TRANSFORMS, "mean")}
                         for name, result in query_recall.items()}
    # The issue-16 goal: with both signals, on every family, at least the better of the CNN and PDQ alone.
    both_at_least_best = {
        name: all(query_recall_at_1[f"query by both ({name})"][family]
                  >= max(query_recall_at_1[f"query by CNN ({name})"][family],
                         query_recall_at_1["query by PDQ (<= 31 bits, quality >= 50)"][family])
                  for family in TRANSFORMS)
        for name in (default, f"{default} + whitening")}
    check_recall_at_1 = {name: {family: result[family]["recall@1"] for family in (*TRANSFORMS, "mean")}
                         for name, result in checks.items()}

    costs = measure_costs(args.weights, [aspect_size(image) for image in list(bases.values())[:32]])

    if args.pairs_out:
        with args.pairs_out.open("w") as out:
            for score, correct in pairs[f"{default} + whitening" if args.whitening else default]:
                out.write(json.dumps({"score": round(float(score), 6), "same": bool(correct)}) + "\n")

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "weights": features.weights_label,
        "data": {"bases": len(base_names), "distractors": len(distractors), "queries": n_queries,
                 "negative_queries": len(negative_images)},
        "mean_recall@1": {name: result["mean"]["recall@1"] for name, result in results.items()},
        "by_family": results,
        "default": default,
        "check_recall": check_recall_at_1,
        "query_recall": query_recall_at_1,
        "query_both_at_least_the_better_signal_on_every_family": both_at_least_best,
        "best_without_options": best_plain,
        "best_by_mean_recall@1": max((name for name in results if not name.startswith("reference")),
                                     key=lambda name: results[name]["mean"]["recall@1"]),
        "threshold_for_precision": thresholds,
        "precision_recall": curves,
        "costs": costs,
        "seconds": round(time.monotonic() - started, 1),
    }
    report(figures, args.json)


if __name__ == "__main__":
    main()
