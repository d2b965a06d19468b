"""The deployable model as an MLflow pyfunc LoggedModel, without Ray: logged from a real training-format
checkpoint into a real sqlite store, registered, loaded back through the registry and run on real image
files (JPEG, grayscale PNG, RGBA PNG) and arrays."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from codetr import build_model
from codetr.config import to_dict
from codetr.data import build_dataset
from codetr.engine import save_checkpoint
from codetr.evaluation.agreement import detection_agreement
from codetr.inference import Predictor, decode_image
from platform.tracking import mlflow_runs as tracking
from platform.tracking.datasets import describe
from platform.tracking.model_logging import check_registered_name, log_deployable_model, serving_request
from platform.core.config_files import load_run_config
from tests.datasets import write_dataset

REGISTERED = "codetr-unit"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A random tiny model saved as a training checkpoint, its run with two evaluations, the model logged
    and registered."""
    root = tmp_path_factory.mktemp("model")
    ann_file, img_dir = write_dataset(root / "coco")
    cfg = load_run_config("codetr_tiny", ["data.dataset=coco", f"data.train.ann_file={ann_file}",
                                          f"data.train.img_dir={img_dir}", f"data.val.ann_file={ann_file}",
                                          f"data.val.img_dir={img_dir}"])
    val = build_dataset(cfg, "val")
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=val.num_classes)
    checkpoint = save_checkpoint(root / "checkpoint_1" / "checkpoint.pt", {
        "model": model.state_dict(), "config": to_dict(cfg), "num_classes": val.num_classes,
        "category_names": val.category_names, "epoch": 2, "iteration": 4, "metrics": {"coco/AP": 0.25}})
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("models", artifact_location=str(root / "artifacts"))   # not ./mlruns
    run_id, _ = tracking.start_run(uri, "models", "trained")
    tracking.log_params(uri, run_id, {"model.lambda1": 1.0, "derived.K": 2})
    logger = tracking.RunLogger(uri, run_id)
    logger.log_metrics({"coco/AP": 0.1, "train/loss": 3.0}, step=2)
    logger.log_metrics({"coco/AP": 0.25, "coco/AP50": 0.5, "train/loss": 2.0}, step=4)
    val_info = describe(cfg, "val", val)
    info = log_deployable_model(uri, run_id, checkpoint.parent, register=REGISTERED, val_dataset=val_info)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1")
    finally:
        mlflow.set_tracking_uri(previous)
    return {"uri": uri, "run_id": run_id, "info": info, "checkpoint": checkpoint, "img_dir": img_dir,
            "val": val_info, "pyfunc": pyfunc, "names": list(val.category_names)}


def test_logged_model_is_linked_to_its_run_and_metrics(logged):
    client = MlflowClient(logged["uri"])
    info = logged["info"]
    model = client.get_logged_model(info.model_id)
    assert "READY" in str(model.status) and model.source_run_id == logged["run_id"]
    assert model.model_type == "object-detection" and model.name == "model"
    assert model.params["model.lambda1"] == "1.0" and model.tags["platform.iteration"] == "4"
    outputs = client.get_run(logged["run_id"]).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(info.model_id, 4)]
    # the checkpoint's evaluation (step 4), with the validation set; not train/loss, not the step-2 evaluation
    linked = {(m.key, m.value, m.step, m.dataset_name, m.dataset_digest) for m in model.metrics}
    val = logged["val"]
    assert linked == {("coco/AP", 0.25, 4, val.name, val.digest), ("coco/AP50", 0.5, 4, val.name, val.digest)}
    assert [(m.step, m.value) for m in client.get_metric_history(logged["run_id"], "coco/AP")] == [(2, 0.1), (4, 0.25)]
    version = client.get_model_version(REGISTERED, "1")
    assert version.source == info.model_uri and info.registered_uri == f"models:/{REGISTERED}/1"
    assert client.get_run(logged["run_id"]).data.tags["platform.registered_model"] == f"models:/{REGISTERED}/1"


def test_signature_and_input_example(logged):
    meta = logged["pyfunc"].metadata
    assert meta.signature.inputs.input_names() == ["image"]
    assert [c.name for c in meta.signature.outputs.inputs] == ["boxes", "scores", "labels", "label_names"]
    assert meta.signature.params.params[0].name == "score_threshold"
    assert meta.saved_input_example_info["type"] == "dataframe"


def test_pyfunc_detects_like_the_deployable_predictor(logged):
    files = [logged["img_dir"] / name for name in ("a.jpg", "b.png", "c.png", "d.jpg")]   # b gray, c RGBA
    images = [f.read_bytes() for f in files]
    array = decode_image(images[0]).permute(1, 2, 0).numpy()            # [H, W, 3] uint8
    out = logged["pyfunc"].predict(pd.DataFrame({"image": [*images, array]}), params={"score_threshold": 0.0})
    assert list(out.columns) == ["boxes", "scores", "labels", "label_names"] and len(out) == 5
    reference = Predictor.from_checkpoint(logged["checkpoint"])([*images, array])
    for row, ref, file in zip(out.itertuples(), reference, [*files, files[0]]):
        assert len(row.boxes) == 90                                     # top-100 of 30 queries x 3 classes
        # paired by label, score and box, not rank by rank: the untrained model's near-tied scores
        agreement = detection_agreement(ref, {"boxes": row.boxes, "scores": row.scores, "labels": row.labels},
                                        score_tol=1e-6)
        assert agreement.ok(score_tol=1e-6, box_tol=1e-4), agreement.summary()
        assert row.label_names == [logged["names"][i] for i in row.labels]
        height, width = decode_image(file.read_bytes()).shape[1:]
        boxes = np.asarray(row.boxes)
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
    assert out.iloc[4]["boxes"] == out.iloc[0]["boxes"]                 # array in = file bytes in
    # the threshold is a param: the untrained model scores ~0.01, so the default 0.3 keeps nothing
    kept = logged["pyfunc"].predict(pd.DataFrame({"image": images[:1]}))
    assert kept.iloc[0]["boxes"] == [] and kept.iloc[0]["label_names"] == []
    some = logged["pyfunc"].predict(pd.DataFrame({"image": images[:1]}), params={"score_threshold": 0.012})
    assert 0 < len(some.iloc[0]["scores"]) < 90 and min(some.iloc[0]["scores"]) >= 0.012


def test_bad_inputs_are_named(logged):
    pyfunc = logged["pyfunc"]
    with pytest.raises(Exception, match="image"):
        pyfunc.predict(pd.DataFrame({"picture": [b"x"]}))
    with pytest.raises(ValueError, match="cannot decode the image bytes"):
        pyfunc.predict(pd.DataFrame({"image": [b"not an image at all"]}))
    with pytest.raises(ValueError, match="uint8"):
        pyfunc.predict(pd.DataFrame({"image": [np.zeros((8, 8, 3), np.float32)]}))


def test_registered_names_are_checked():
    assert check_registered_name("codetr-tiny") == "codetr-tiny"
    for bad in ("", "  ", "team/model", "a:b", "a..b"):
        with pytest.raises(ValueError, match="register"):
            check_registered_name(bad)


def test_deployable_file_round_trip(logged, tmp_path):
    predictor = Predictor.from_checkpoint(logged["checkpoint"])
    assert not predictor.model.aux_heads and predictor.category_names == logged["names"]
    again = Predictor.load(predictor.save(tmp_path / "deployable.pt"))
    image = (logged["img_dir"] / "d.jpg").read_bytes()
    a, b = predictor.detect(image), again.detect(image)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    with pytest.raises(ValueError, match="codetr-deployable"):
        Predictor.load(logged["checkpoint"])


def test_serving_request_body_carries_base64_images():
    body = serving_request([b"\x89PNG...", b"\xff\xd8jpeg"], score_threshold=0.5)
    assert body["dataframe_split"]["columns"] == ["image"]
    assert body["dataframe_split"]["data"] == [["iVBORy4uLg=="], ["/9hqcGVn"]]
    assert body["params"] == {"score_threshold": 0.5}
