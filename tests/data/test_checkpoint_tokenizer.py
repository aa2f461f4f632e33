"""``data.modalities.<m>.tokenizer = DIR``: the pipeline tokenises a text modality with a checkpoint's
``tokenizer.json``, as the converted text tower of that checkpoint reads it.

A text-only dataset is built from a manifest (``data build --from``), a tiny random BERT with a word-level
``tokenizer.json`` whose pad id is 1 (not 0) is saved next to it; the pipeline's ids and token_mask are
compared with ``transformers``' ``AutoTokenizer`` on the stored captions, the inference path of a trained
run with the pipeline, and a short run fine-tunes a classifier over the converted tower.
"""
import contextlib
import csv
import io
import json
import threading

import numpy as np
import pytest

pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from experiments.__main__ import main  # noqa: E402

MAX_LEN, PAD = 12, 1
WORDS = ["a", "the", "red", "blue", "green", "cat", "dog", "bird", "sat", "on", "mat", "and"]
LABELS = {"red": "r", "blue": "b", "green": "g"}


def _captions():
    """(caption, label, split) rows: unknown words, one empty text, one longer than MAX_LEN tokens."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        colour = ["red", "blue", "green"][i % 3]
        words = ["a", colour] + list(rng.choice(WORDS[5:], size=1 + i % 4)) + (["zebra"] if i % 5 == 0 else [])
        rows.append({"caption": " ".join(words), "label": LABELS[colour], "split": "train" if i < 16 else "test"})
    rows[3]["caption"] = ""
    rows[6]["caption"] = " ".join(["the red cat sat on a mat"] * 3)
    return rows


def _tokenizer_dir(path):
    """A word-level tokenizer.json with [CLS] ... [SEP] around each text and [PAD] = 1."""
    vocab = {"[UNK]": 0, "[PAD]": PAD, "[CLS]": 2, "[SEP]": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                         cls_token="[CLS]", sep_token="[SEP]").save_pretrained(str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint dir, data config path, manifest rows): a tiny BERT + tokenizer, a built text dataset."""
    root = tmp_path_factory.mktemp("ckpt_text")
    ckpt = root / "bert"
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=4 + len(WORDS), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=16,
                                  pad_token_id=PAD)
    transformers.BertModel(cfg).eval().save_pretrained(str(ckpt))
    _tokenizer_dir(ckpt)
    rows = _captions()
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["data", "build", "--from", str(root / "manifest.csv"), "--name", "ckpt_text",
                     "--data_dir", str(root / "tfds"), "--text_max_len", str(MAX_LEN)]) == 0
    return str(ckpt), str(root / "ckpt_text_config.py"), rows


def _data_config(setup, **changes):
    from experiments import config_utils

    ckpt, config_path, _ = setup
    cfg = config_utils.load_config(config_path).data
    cfg.modalities.caption.tokenizer = ckpt
    for k, v in changes.items():
        cfg[k] = v
    return cfg


def _reference(ckpt, texts):
    ref = transformers.AutoTokenizer.from_pretrained(ckpt)(texts, padding="max_length", truncation=True,
                                                           max_length=MAX_LEN, return_tensors="np")
    return ref["input_ids"].astype(np.int32), ref["attention_mask"].astype(bool)


def _pipeline_split(cfg, split):
    """Every example of ``split`` in stored order through the Grain pipeline (2 threads, batches of 4),
    with the captions as stored."""
    from mmjax.data import make_iterator
    from mmjax.data.source import SplitReader

    batches = list(make_iterator(cfg, split, global_batch_size=4, seed=0, train=False,
                                 process_index=0, process_count=1))
    texts = [ex["caption"].decode() for ex in SplitReader(cfg, split).raw(range(16))]
    cat = lambda f: np.concatenate([f(b) for b in batches])  # noqa: E731
    return texts, cat(lambda b: b["inputs"]["caption"]), cat(lambda b: b["token_mask"]["caption"]), \
        cat(lambda b: b["valid"])


def test_pipeline_ids_and_masks_equal_autotokenizer(setup):
    ckpt, _, _ = setup
    cfg = _data_config(setup, bad_examples="skip", prefetch=2, read_threads=2)
    texts, ids, mask, valid = _pipeline_split(cfg, "train")
    assert len(ids) == 16 and ids.dtype == np.int32 and ids.shape[1] == MAX_LEN
    ref_ids, ref_mask = _reference(ckpt, texts)
    # The empty caption still gets [CLS] [SEP] but counts as empty: skipped, and only it; its ids are
    # zeros, as a missing modality's (the pipeline's rule for every modality).
    empty = np.array([t == "" for t in texts])
    assert empty.sum() == 1 and ref_mask[empty].sum() == 2
    np.testing.assert_array_equal(valid, ~empty)
    assert not ids[empty].any()
    np.testing.assert_array_equal(ids[~empty], ref_ids[~empty])
    np.testing.assert_array_equal(mask, ref_mask)
    assert (ids == PAD).any() and not np.array_equal(mask[~empty], ids[~empty] != 0)  # pad 1: ids != 0 is wrong
    np.testing.assert_array_equal(~mask[~empty], ids[~empty] == PAD)
    assert mask.all(1).sum() >= 1  # the long caption, truncated (its [SEP] kept, as the reference)


def test_missing_empty_text_has_no_real_token(setup):
    """Under bad_examples="missing" the empty caption is length 0 with no real token, the others
    keep their length: the tokens before padding, special tokens included."""
    from mmjax.data import split_columns
    from mmjax.data.source import SplitReader

    cfg = _data_config(setup)
    cols = split_columns(cfg, "train")
    texts = [ex["caption"].decode() for ex in SplitReader(cfg, "train").raw(cols["index"])]
    empty = np.array([t == "" for t in texts])
    np.testing.assert_array_equal(cols["caption__length"] == 0, empty)
    assert not cols["caption__mask"][empty].any() and not cols["keep"][empty].any()
    np.testing.assert_array_equal(cols["caption__length"][~empty], _reference(setup[0], texts)[1][~empty].sum(1))


def test_the_tokenizer_is_safe_across_threads(setup):
    from mmjax.encoders.hf import text_preprocess

    tp = text_preprocess(setup[0], MAX_LEN)
    texts = [r["caption"] for r in setup[2]] * 8
    want = tp.encode(texts)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(tp.encode(texts))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_bad_tokenizer_settings_are_one_line_config_errors(setup, tmp_path):
    from mmjax.data import make_iterator
    from mmjax.data.errors import DataConfigError

    def first_batch(cfg):
        return next(iter(make_iterator(cfg, "train", global_batch_size=4, seed=0, train=True,
                                       process_index=0, process_count=1)))

    with pytest.raises(DataConfigError, match=r"modalities\.caption\.tokenizer: .*no tokenizer\.json"):
        first_batch(_set(_data_config(setup), tokenizer=str(tmp_path)))
    with pytest.raises(DataConfigError, match="max_len 40 exceeds the checkpoint's 16 positions"):
        first_batch(_set(_data_config(setup), max_len=40))
    with pytest.raises(DataConfigError, match="tokenizer must be a model directory"):
        first_batch(_set(_data_config(setup), tokenizer=3))


def _set(cfg, **kw):
    for k, v in kw.items():
        with cfg.modalities.caption.ignore_type():
            cfg.modalities.caption[k] = v
    return cfg


def test_a_classifier_on_the_converted_tower_trains_and_predicts_as_the_pipeline(setup, tmp_path):
    import jax

    from mmjax import load
    from mmjax.encoders.hf import pretrained_variables

    ckpt, config_path, _ = setup
    workdir = tmp_path / "run"
    encoders = {"caption": {"name": "pretrained", "path": ckpt}}
    assert main(["train", config_path, "--workdir", str(workdir), "--config.total_steps=3",
                 "--config.batch_size=4", "--config.log_every=1", "--config.tensorboard=False",
                 "--config.eval_every=0", f"--config.model.encoders={encoders!r}",
                 f"--config.data.modalities.caption.tokenizer={ckpt}",
                 f"--config.init_from.pretrained={ckpt}", "--config.init_from.target=encoder_caption_0",
                 "--config.optim.freeze=('encoder_caption_0',)"]) == 0
    losses = [r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 3 and np.isfinite(losses).all()
    model = load(str(workdir), "latest")
    got = model.variables["params"]["encoder_caption_0"]
    want = pretrained_variables(ckpt)["params"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
    # Inference tokenises as the pipeline (the run record's data config names the tokenizer).
    assert model.specs["caption"].tokenizer_dir == ckpt
    texts, ids, mask, _ = _pipeline_split(_data_config(setup, prefetch=0), "train")  # bad_examples="missing"
    batch = model.preprocess({"caption": texts}, normalize=False)
    np.testing.assert_array_equal(batch["inputs"]["caption"], ids)
    np.testing.assert_array_equal(batch["token_mask"]["caption"], mask)
    np.testing.assert_array_equal(batch["modality_mask"]["caption"], np.array([t != "" for t in texts]))
    from mmjax.inference.export import _preprocessing_doc

    assert _preprocessing_doc(model)["caption"]["tokenizer"] == f"{ckpt}/tokenizer.json"  # what export describes
    probs = model.predict({"caption": texts})
    assert probs.shape == (16, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
