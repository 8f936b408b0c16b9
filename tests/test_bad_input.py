"""Bad input: one clear line on stderr, exit 2, and no output file — each case the issue lists."""

import pickle

import pytest
import torch

from deploy.models import create_model


def assert_clean_failure(result, out_path, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out_path is not None:
        assert not out_path.exists()
        assert not any(p.name.startswith(f".{out_path.name}") for p in out_path.parent.iterdir()), "temp left behind"


def test_missing_file(cli, tmp_path):
    out = tmp_path / "out.onnx"
    result = cli("check", tmp_path / "nope.onnx", "tiny-resnet", "--json", out.with_suffix(".json"))
    assert_clean_failure(result, out.with_suffix(".json"), "nope.onnx", "no such file")


def test_truncated_onnx(cli, tiny_onnx, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    result = cli("check", "tiny-resnet", broken)
    assert_clean_failure(result, None, "broken.onnx", "not a valid ONNX file")


def test_unknown_zoo_name_suggests(cli, tmp_path):
    out = tmp_path / "out.onnx"
    result = cli("export", "resnet81", "-o", out)
    assert_clean_failure(result, out, "unknown model 'resnet81'", "resnet18")


@pytest.mark.parametrize("shape", ["1,3,a,224", "1,3,,224", "0,3,32,32", "-1,3,32,32"])
def test_malformed_shape(cli, tmp_path, shape):
    out = tmp_path / "out.onnx"
    result = cli("export", "tiny-resnet", "-o", out, "--shape", shape)
    assert_clean_failure(result, out, "--shape", "1,3,224,224")


def test_weights_with_wrong_keys(cli, tmp_path):
    state = create_model("tiny-convnet").state_dict()  # another model's checkpoint
    ckpt = tmp_path / "wrong.pt"
    torch.save(state, ckpt)
    out = tmp_path / "out.onnx"
    result = cli("export", "tiny-resnet", "-o", out, "--weights", ckpt)
    assert_clean_failure(result, out, "wrong.pt", "missing", "unexpected")


class RunsCode:
    """Unpickling this calls os.system: exactly what weights_only=True must refuse."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_that_would_run_code_is_refused(cli, tmp_path, writer):
    ckpt = tmp_path / "evil.pt"
    if writer == "pickle":  # a bare pickle, protocol 4
        with open(ckpt, "wb") as f:
            pickle.dump({"conv.weight": RunsCode()}, f)
    else:  # torch's zip format, protocol 2
        torch.save({"conv.weight": RunsCode()}, ckpt)
    out = tmp_path / "out.onnx"
    result = cli("export", "tiny-resnet", "-o", out, "--weights", ckpt)
    assert_clean_failure(result, out, "evil.pt", "refused", "would import and call", "system")


def test_truncated_checkpoint(cli, tmp_path):
    ckpt = tmp_path / "cut.pt"
    torch.save(create_model("tiny-resnet").state_dict(), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    out = tmp_path / "out.onnx"
    assert_clean_failure(cli("export", "tiny-resnet", "-o", out, "--weights", ckpt), out, "cut.pt")


def test_output_in_missing_folder_and_wrong_suffix(cli, tmp_path):
    assert_clean_failure(cli("export", "tiny-resnet", "-o", tmp_path / "no" / "x.onnx"), None, "does not exist")
    out = tmp_path / "model.txt"
    assert_clean_failure(cli("export", "tiny-resnet", "-o", out), out, ".onnx")


def test_user_model_needs_shape(cli, tmp_path):
    src = tmp_path / "net.py"
    src.write_text("import torch\ndef build():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    out = tmp_path / "out.onnx"
    assert_clean_failure(cli("export", f"{src}:build", "-o", out), out, "--shape")


def test_bad_data_folder(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_failure(cli("check", "tiny-resnet", "tiny-resnet", "--data", empty), None, "no images")


def test_export_that_fails_verification_writes_nothing(tmp_path):
    """A model whose ONNX export differs from eager PyTorch (a data-dependent branch traced one way)."""
    from deploy.artifacts.artifact import Artifact, TensorSpec
    from deploy.errors import CheckFailedError
    from deploy.jobs.export import export_onnx

    class Branchy(torch.nn.Module):
        def forward(self, x):
            # export traces with a zero example: the first branch is frozen into the graph
            return x + 1 if float(x.abs().sum()) == 0 else x * 2

    artifact = Artifact("branchy", "torch", [TensorSpec("input", ("batch", 3, 8, 8))], module=Branchy(),
                        example_shape=(1, 3, 8, 8))
    out = tmp_path / "branchy.onnx"
    with pytest.raises(CheckFailedError, match="not written"):
        export_onnx(artifact, out, verify_data=None)
    assert list(tmp_path.iterdir()) == []


def test_factory_that_raises_and_module_that_fails_to_import(cli, tmp_path, monkeypatch):
    (tmp_path / "badpkg.py").write_text("1 / 0\n")
    (tmp_path / "goodmod.py").write_text("def broken():\n    raise RuntimeError('factory fails')\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "u.onnx"
    assert_clean_failure(cli("export", "badpkg:make", "-o", out, "--shape", "1,3,8,8"), out, "ZeroDivisionError")
    assert_clean_failure(cli("export", f"{tmp_path / 'goodmod.py'}:broken", "-o", out, "--shape", "1,3,8,8"), out,
                         "factory fails")


def test_corrupt_checkpoint_is_not_called_malicious(cli, tmp_path):
    ckpt = tmp_path / "noise.pt"
    ckpt.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "out.onnx"
    result = cli("export", "tiny-resnet", "-o", out, "--weights", ckpt)
    assert_clean_failure(result, out, "noise.pt", "not a readable checkpoint")
    assert "refused" not in result.stderr


def test_model_that_cannot_take_the_shape(cli, tmp_path):
    out = tmp_path / "grey.onnx"
    assert_clean_failure(cli("export", "tiny-resnet", "--shape", "1,1,32,32", "-o", out), out,
                         "does not run on input shape (1, 1, 32, 32)")


def test_batch_baked_into_a_user_model(cli, tmp_path):
    src = tmp_path / "flat.py"
    src.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                   "        return x.reshape(1, 192) * 2\ndef make():\n    return M()\n")
    result = cli("check", f"{src}:make", f"{src}:make", "--shape", "1,3,8,8", "--samples", "4")
    assert result.exit_code == 2 and "baked into the model" in result.stderr


def test_outputs_that_are_folders_and_bad_batches(cli, tiny_onnx, tmp_path):
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    assert_clean_failure(cli("export", "tiny-resnet", "-o", folder), None, "is a folder")
    assert_clean_failure(cli("check", tiny_onnx, tiny_onnx, "--run-batch", "-2"), None, "--run-batch -2")
