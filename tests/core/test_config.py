"""emt.core.config: YAML + overrides into frozen dataclasses; every problem reported at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from emt.core.config import Config, ConfigError, load_config, stable_hash, to_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_configs_load() -> None:
    paper = load_config(CONFIGS / "paper.yaml")
    assert paper.model.name == "Qwen/Qwen2.5-7B-Instruct"
    assert (paper.lora.r, paper.lora.alpha, paper.lora.dropout, paper.lora.use_rslora) == (32, 64, 0.0, True)
    assert set(paper.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    t = paper.training
    assert (t.learning_rate, t.lr_scheduler, t.warmup_steps, t.weight_decay) == (1e-5, "linear", 5, 0.01)
    assert (t.per_device_batch_size, t.grad_accum, t.epochs, t.max_length, t.seed) == (2, 8, 1.0, 2048, 0)
    assert t.assistant_only_loss and paper.checkpointing.every_steps == 2
    assert paper.data.heldout_fraction == 0.1
    assert paper.cluster.partition == "gpu"  # from the cluster profile the config names
    debug = load_config(CONFIGS / "debug.yaml")
    assert debug.model.name == "builtin:tiny" and debug.data.root == "builtin:debug"
    assert debug.cluster.output_root == "outputs"


def test_every_yaml_starts_with_the_command_that_uses_it() -> None:
    for p in sorted(CONFIGS.rglob("*.yaml")):
        first = p.read_text().splitlines()[0]
        assert first.startswith("# python launch/"), f"{p}: first line should give the command: {first!r}"


def test_frozen() -> None:
    cfg = load_config(CONFIGS / "debug.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.learning_rate = 1.0  # type: ignore[misc]


def test_unknown_key_names_file_line_and_valid_keys(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  learning_rate: 1e-4\n  lrate: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert f"{p}:3" in msg and "unknown key 'lrate' in training" in msg
    assert "learning_rate" in msg and "grad_accum" in msg  # the valid keys are listed


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trainig' in top level; valid keys: activations, checkpointing, cluster"):
        load_config(write(tmp_path, "trainig: {}\n"))


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  grad_accum: two\n  method: qlora\nlora:\n  r: [1]\nbogus: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert len(ei.value.problems) == 4
    text = str(ei.value)
    assert f"{p}:2" in text and "expected an integer" in text
    assert "must be one of lora, full" in text
    assert f"{p}:5" in text


def test_semantic_validation_all_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  learning_rate: -1\n  grad_accum: 0\ndata:\n  heldout_fraction: 1.5\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert len(ei.value.problems) == 3
    assert any(f"{p}:2" in x and "learning_rate" in x for x in ei.value.problems)
    assert any(f"{p}:5" in x and "heldout_fraction" in x for x in ei.value.problems)


def test_overrides(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "debug.yaml", ["training.learning_rate=2e-5", "lora.target_modules=[q_proj,v_proj]",
                                                "cluster.train.time_min=7", "training.max_steps=null"])
    assert cfg.training.learning_rate == 2e-5
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.cluster.train.time_min == 7 and cfg.cluster.train.cpus == 2  # untouched siblings kept


def test_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["training.lr=1", "nodot", "foo.bar=1"])
    text = str(ei.value)
    assert "override 'training.lr=1': unknown key 'lr' in training" in text
    assert "expected key=value" in text and "valid sections" in text


def test_cluster_profile_from_cli_and_missing(tmp_path: Path) -> None:
    prof = write(tmp_path, "partition: big\ntrain: {gpus: 2}\n", "prof.yaml")
    cfg = load_config(CONFIGS / "debug.yaml", cluster=prof)
    assert cfg.cluster.partition == "big" and cfg.cluster.train.gpus == 2
    bad = write(tmp_path, "partiton: big\n", "bad.yaml")
    with pytest.raises(ConfigError, match=rf"{bad}:1: unknown key 'partiton' in cluster"):
        load_config(CONFIGS / "debug.yaml", cluster=bad)
    with pytest.raises(ConfigError, match="cluster profile .*nope.yaml not found"):
        load_config(write(tmp_path, "cluster: nope.yaml\n"))


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: not valid YAML"):
        load_config(write(tmp_path, "training:\n  a: [1,\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_hash_is_stable_and_sensitive() -> None:
    a = load_config(CONFIGS / "debug.yaml")
    b = load_config(CONFIGS / "debug.yaml")
    c = load_config(CONFIGS / "debug.yaml", ["training.learning_rate=1e-3"])
    assert stable_hash(a) == stable_hash(b) != stable_hash(c)
    assert len(stable_hash(a)) == 8
    assert "learning_rate" in to_yaml(a)
    assert isinstance(Config(), Config)


def test_resources_beyond_cluster_limits_are_reported_together() -> None:
    with pytest.raises(ConfigError) as ei:
        # cpus=5: a 5-GPU training job runs 5 tasks and needs a CPU for each (checked too).
        load_config(CONFIGS / "debug.yaml", ["cluster.train.gpus=5", "cluster.train.cpus=5", "cluster.eval.cpus=9"])
    text = str(ei.value)
    assert len(ei.value.problems) == 2
    assert "cluster.train.gpus: 5 exceeds this cluster's limit cluster.limits.gpus=4" in text


# ----------------------------------------------------------------------------------------------
# DeepSpeed, multi-GPU and checkpoint-policy keys


def test_deepspeed_short_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from emt.core.dsconfig import DEEPSPEED_DIR, SHORT_NAMES, load, zero_stage

    assert {p.stem for p in DEEPSPEED_DIR.glob("*.json")} == set(SHORT_NAMES)
    for name in SHORT_NAMES:  # every shipped file: valid, precision from the training config, loadable saves
        data = load(name)
        assert data["bf16"]["enabled"] == "auto" and data["train_micro_batch_size_per_gpu"] == "auto"
        assert load_config(CONFIGS / "debug.yaml", [f"training.deepspeed={name}", "training.method=full"])
        if zero_stage(data) == 3:
            assert data["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero_stage(load("zero2")) == 2 and load("zero3_offload")["zero_optimization"]["offload_optimizer"]["device"] == "cpu"

    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "debug.yaml", ["training.deepspeed=ds.json"])
    assert cfg.training.deepspeed == str(own)  # made absolute: jobs may start in another directory


def test_deepspeed_errors_name_the_key_and_the_choices(tmp_path: Path) -> None:
    import json

    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "debug.yaml", ["training.deepspeed=zero4"])
    assert len(e.value.problems) == 1
    msg = e.value.problems[0]
    assert "training.deepspeed" in msg and "'zero4'" in msg and "zero2, zero3, zero3_offload" in msg

    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 3}, // no comments\n}')
    no_gather = tmp_path / "nogather.json"
    no_gather.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 7}))
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "debug.yaml", [f"training.deepspeed={bad}"])
    assert "not valid JSON" in str(e.value) and "comments" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "debug.yaml", [f"training.deepspeed={no_gather}", "training.method=full"])
    text = str(e.value)
    assert "stage3_gather_16bit_weights_on_model_save" in text
    assert "train_micro_batch_size_per_gpu=7 disagrees with training.per_device_batch_size=4" in text
    # LoRA under ZeRO-3 saves the adapter itself: gathering the whole model is not required.
    fixed = tmp_path / "ok.json"
    fixed.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert load_config(CONFIGS / "debug.yaml", [f"training.deepspeed={fixed}"]).training.method == "lora"


def test_checkpoint_policy_and_gpus_validation() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "debug.yaml", ["checkpointing.keep_every=3", "checkpointing.resume_state_every=1",
                                             "cluster.train.gpus=4", "cluster.train.cpus=2",
                                             "cluster.disk_budget_gb=0"])
    text = str(e.value)
    assert len(e.value.problems) == 4
    assert "checkpointing.keep_every: must be null or a multiple of checkpointing.every_steps=2" in text
    assert "checkpointing.resume_state_every: must be null or a multiple" in text
    assert "cluster.train.cpus: 2 is fewer than cluster.train.gpus=4" in text
    assert "cluster.disk_budget_gb: must be > 0" in text
    ok = load_config(CONFIGS / "debug.yaml", ["checkpointing.keep_every=10", "checkpointing.resume_state_every=4",
                                              "cluster.train.gpus=2"])
    assert (ok.checkpointing.keep_every, ok.checkpointing.resume_state_every, ok.cluster.train.gpus) == (10, 4, 2)


def test_run_hash_world_size_and_deepspeed_content(tmp_path: Path) -> None:
    import json

    from emt.sweep.runs import build_sweep

    def h(*ov: str) -> str:
        return build_sweep(load_config(CONFIGS / "paper.yaml", list(ov)), runs=["medical_mild"])[0].hash

    base = h()
    # Disk and resume policies change no checkpoint's weights: same run.
    assert h("checkpointing.keep_every=10", "checkpointing.resume_state_every=20") == base
    assert h("cluster.train.gpus=2") != base  # the global batch doubles: another run
    f = tmp_path / "z3.json"
    from emt.core.dsconfig import load

    f.write_text(json.dumps(load("zero3")))
    assert h("training.deepspeed=zero3") == h(f"training.deepspeed={f}") != base  # content, not name
    f.write_text(json.dumps({**load("zero3"), "gradient_clipping": 0.5}))
    assert h(f"training.deepspeed={f}") != h("training.deepspeed=zero3")


# ----------------------------------------------------------------------------------------------
# eval.vllm engine settings, the judge pipeline, judge servers


def test_eval_vllm_settings_validated_together(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    v = cfg.eval.vllm  # defaults written for one H100 with Qwen2.5-7B + rank-32 LoRA
    assert (v.gpu_memory_utilization, v.max_model_len, v.max_loras, v.enable_prefix_caching) == (0.7, 4096, 4, True)
    assert load_config(CONFIGS / "debug.yaml").eval.vllm.gpu_memory_utilization == 0.3  # CPU values
    with pytest.raises(ConfigError, match="unknown key 'max_lora' in eval.vllm; valid keys: checkpoints_per_call, "
                                          "cpu_kv_cache_gb"):
        load_config(CONFIGS / "debug.yaml", ["eval.vllm.max_lora=2"])
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["eval.vllm.max_loras=2", "eval.vllm.checkpoints_per_call=3",
                                             "eval.vllm.gpu_memory_utilization=1.5", "eval.vllm.max_model_len=40",
                                             "eval.judge_queue=0", "eval.time_budget=0"])
    text = str(ei.value)
    assert len(ei.value.problems) == 5, text
    assert "eval.vllm.max_loras: 2 < eval.vllm.checkpoints_per_call=3" in text
    assert "eval.vllm.max_model_len: 40 leaves no room for the prompt with eval.max_new_tokens=48" in text
    assert "override 'eval.judge_queue=0'" in text and "eval.time_budget: must be in (0, 1]" in text


def test_judge_servers_and_serve_references_checked() -> None:
    servers = '[{name: qwen-judge, model: Qwen/Qwen2.5-7B-Instruct}]'
    ok = load_config(CONFIGS / "debug.yaml", [f"judge.servers={servers}",
                                              'judge.judges=[{model: Qwen/Qwen2.5-7B-Instruct, base_url: "serve:qwen-judge"}]'])
    assert ok.judge.servers[0].name == "qwen-judge" and ok.judge.servers[0].port == 0
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", [
            f"judge.servers={servers}",
            'judge.judges=[{model: Qwen/Qwen2.5-7B-Instruct, base_url: "serve:qwen"}, '
            '{model: other, name: b, base_url: "serve:qwen-judge"}]'])
    text = str(ei.value)
    assert "serve:qwen: no judge.servers entry named 'qwen' (configured: qwen-judge)" in text
    assert "judge.judges.1.model: 'other', but server 'qwen-judge' serves 'Qwen/Qwen2.5-7B-Instruct'" in text
    with pytest.raises(ConfigError, match="unknown key 'gpu' in judge.servers; valid keys: command, cpus"):
        load_config(CONFIGS / "debug.yaml", ["judge.servers=[{name: a, model: m, gpu: 1}]"])
    with pytest.raises(ConfigError, match=r"judge.servers.0.gpus: 9 exceeds this cluster's limit cluster.limits.gpus=4"):
        load_config(CONFIGS / "debug.yaml", ["judge.servers=[{name: a, model: m, gpus: 9}]"])


def test_judge_timeout_base_url_scheme_and_key_env_checked() -> None:
    """judge.timeout_s=0, a base_url without a scheme and a key written where a variable name
    belongs are each one line naming the key and the fix, all reported at once."""
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", [
            "judge.timeout_s=0",
            'judge.judges=[{model: a, base_url: "localhost:8000/v1"}, '
            '{model: b, base_url: "http://h:8000/v1", api_key_env: "sk-live-1234"}]'])
    text = str(ei.value)
    assert len(ei.value.problems) == 3, text
    assert "judge.timeout_s: must be > 0 seconds" in text
    assert "judge.judges.0.base_url: 'localhost:8000/v1' has no scheme; write http://localhost:8000/v1" in text
    assert "judge.judges.1.api_key_env: the NAME of an environment variable holding the key" in text
    ok = load_config(CONFIGS / "debug.yaml", ['judge.judges=[{model: b, base_url: "https://h/v1", api_key_env: K}]'])
    assert ok.judge.judges[0].api_key_env == "K"


def test_judge_prices_checked_with_file_and_line(tmp_path: Path) -> None:
    """judge.prices: [USD in, USD out] per 1M tokens by model prefix; a bad entry names its key and
    line, and the prices enter no hash (they change no result)."""
    from emt.eval.plan import eval_hash

    base = (CONFIGS / "debug.yaml").read_text().replace("cluster: cluster/local.yaml", "")
    priced = base.replace("\njudge:\n", "\njudge:\n  prices:\n    gpt-4.1-mini: [0.5, 2.0]\n")
    cfg = load_config(write(tmp_path, priced))
    assert cfg.judge.prices == {"gpt-4.1-mini": (0.5, 2.0)}
    assert eval_hash(cfg) == eval_hash(load_config(write(tmp_path, base, "plain.yaml")))
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, priced.replace("[0.5, 2.0]", "[0.5]"), "bad.yaml"))
    assert len(ei.value.problems) == 1
    assert "bad.yaml:" in ei.value.problems[0] and "judge.prices.gpt-4.1-mini: must be [USD per 1M input tokens" in ei.value.problems[0]


def test_judge_serve_config_shares_the_paper_runs() -> None:
    """configs/judge-serve.yaml scores the same run directories as paper.yaml (only judges differ)."""
    serve, paper = load_config(CONFIGS / "judge-serve.yaml"), load_config(CONFIGS / "paper.yaml")
    for section in ("model", "lora", "training", "checkpointing", "data", "eval", "cluster", "activations", "monitor"):
        assert getattr(serve, section) == getattr(paper, section), section
    assert [j.base_url for j in serve.judge.judges] == [None, "serve:qwen-judge"]


def test_empty_trait_list_rejected_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["eval.traits=[]"])
    assert len(ei.value.problems) == 1, str(ei.value)
    assert "override 'eval.traits=[]'" in str(ei.value) and "eval.traits: is empty" in str(ei.value)
    assert "eval.traits=[evil,hallucination]" in str(ei.value)
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: eval.traits: is empty"):
        load_config(write(tmp_path, "eval:\n  samples_per_question: 2\n  traits: []\n"))


# ----------------------------------------------------------------------------------------------
# "did you mean", include:, training.sft_args


def test_unknown_yaml_key_suggests_the_closest_valid_ones(tmp_path: Path) -> None:
    p = write(tmp_path, "trainig:\n  seed: 1\ntraining:\n  learnin_rate: 1e-4\n  zzzz: 1\neval:\n  vllm:\n    max_lora: 2\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    problems = {x.split("unknown key ")[1].split("'")[1]: x for x in ei.value.problems}
    assert problems["trainig"].startswith(f"{p}:1: unknown key 'trainig' in top level; valid keys: activations, ")
    assert problems["trainig"].endswith("; did you mean 'training'?")
    assert problems["learnin_rate"].startswith(f"{p}:4: unknown key 'learnin_rate' in training; valid keys: ")
    assert problems["learnin_rate"].endswith("weight_decay; did you mean 'learning_rate'?")  # full list kept
    assert problems["max_lora"].endswith("; did you mean 'max_loras'?")
    assert "did you mean" not in problems["zzzz"]  # nothing close: no guess


def test_unknown_override_suggests_the_whole_dotted_override() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["training.learnin_rate=2e-5", "cluster.trian.gpus=2",
                                             "trainig.seed=3", "learning_rate=1e-4", "eval.vllm.max_lora=2"])
    text = str(ei.value)
    assert len(ei.value.problems) == 5, text
    assert ("override 'training.learnin_rate=2e-5': unknown key 'learnin_rate' in training; valid keys: "
            "assistant_only_loss,") in text
    assert "; did you mean 'training.learning_rate=2e-5'?" in text
    assert "; did you mean 'cluster.train.gpus=2' or 'cluster.train.cpus=2'?" in text
    assert "override 'trainig.seed=3': keys look like section.key; valid sections: model, " in text
    assert "; did you mean 'training.seed=3'?" in text
    assert "; did you mean 'training.learning_rate=1e-4' or 'schedules.learning_rates=1e-4'?" in text
    assert "; did you mean 'eval.vllm.max_loras=2'?" in text


def test_include_merges_mappings_replaces_lists_and_the_including_file_wins(tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    write(base_dir, "cluster:\n  partition: ignored\n", "prof.yaml")
    write(base_dir, "partition: from-base-profile\n", "prof2.yaml")
    write(base_dir, "# python launch/train.py\ntraining:\n  learning_rate: 3.0e-5\n  grad_accum: 4\n"
                    "data:\n  domains: [medical, math]\n  levels: {normal: normal, strong: misaligned_2}\n"
                    "eval:\n  samples_per_question: 3\n  vllm: {max_loras: 6, max_num_seqs: 64}\n"
                    "cluster: prof2.yaml\n", "base.yaml")
    write(base_dir, "include: base.yaml\ntraining:\n  grad_accum: 2\nlora:\n  r: 4\n", "middle.yaml")
    top = write(tmp_path, "include: base/middle.yaml\ntraining:\n  seed: 5\ndata:\n  domains: [medical]\n"
                          "  levels: {mild: misaligned_1}\neval:\n  vllm: {max_loras: 8}\n")
    cfg = load_config(top, ["training.grad_accum=16"])
    t = cfg.training
    assert (t.learning_rate, t.seed, t.grad_accum, cfg.lora.r) == (3e-5, 5, 16, 4)  # chain, then override
    assert cfg.data.domains == ("medical",)  # a list is replaced whole
    assert cfg.data.levels == {"normal": "normal", "strong": "misaligned_2", "mild": "misaligned_1"}  # merged
    assert (cfg.eval.samples_per_question, cfg.eval.vllm.max_loras, cfg.eval.vllm.max_num_seqs) == (3, 8, 64)
    assert cfg.cluster.partition == "from-base-profile"  # base.yaml's profile, found next to base.yaml
    assert cfg.source == str(top)
    # Several files, later ones winning; a section set to null is back to its defaults.
    write(tmp_path, "training: {seed: 9, warmup_steps: 1}\n", "other.yaml")
    two = write(tmp_path, "include: [base/base.yaml, other.yaml]\neval: null\n", "two.yaml")
    cfg2 = load_config(two)
    assert (cfg2.training.seed, cfg2.training.warmup_steps, cfg2.training.learning_rate) == (9, 1, 3e-5)
    assert cfg2.eval.samples_per_question == 10 and cfg2.cluster.partition == "from-base-profile"


def test_include_errors_name_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "training:\n  seed: 1\n  learnin_rate: 2\n", "base.yaml")
    top = write(tmp_path, "# first\ninclude: base.yaml\ntraining: {grad_accum: 0}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(top)
    assert ei.value.problems == [f"{tmp_path / 'base.yaml'}:3: unknown key 'learnin_rate' in training; valid keys: "
                                 f"{ei.value.problems[0].split('valid keys: ')[1]}"]
    assert ei.value.problems[0].endswith("did you mean 'learning_rate'?")
    write(tmp_path, "training:\n  seed: 1\n  grad_accum: 3\n", "base.yaml")
    with pytest.raises(ConfigError, match=rf"{top}:3: training.grad_accum: must be >= 1"):
        load_config(top)  # the value, and so the line, is the including file's
    missing = write(tmp_path, "include: nope.yaml\n", "missing.yaml")
    with pytest.raises(ConfigError, match=rf"{missing}:1: include: {tmp_path / 'nope.yaml'} not found \(a relative "
                                          rf"path is from the including file's directory, {tmp_path}\)"):
        load_config(missing)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'bad.yaml'}:1: include: expected a config file name"):
        load_config(write(tmp_path, "include: {a: 1}\n", "bad.yaml"))
    a = write(tmp_path, "include: b.yaml\n", "a.yaml")
    write(tmp_path, "include: [base.yaml, a.yaml]\n", "b.yaml")
    with pytest.raises(ConfigError) as ei:
        load_config(a)
    assert ei.value.problems == [f"{tmp_path / 'b.yaml'}:1: include: {tmp_path / 'a.yaml'} is already being read, so "
                                 f"the includes form a cycle ({a} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}); "
                                 f"remove one of them"]
    with pytest.raises(ConfigError, match="includes form a cycle"):
        load_config(write(tmp_path, "include: self.yaml\n", "self.yaml"))
    # The same file included twice along different branches is no cycle.
    write(tmp_path, "include: base.yaml\n", "c.yaml")
    assert load_config(write(tmp_path, "include: [base.yaml, c.yaml]\n", "diamond.yaml")).training.grad_accum == 3


def test_judge_serve_extends_paper_and_keeps_its_run_hashes(tmp_path: Path) -> None:
    from emt.sweep.runs import build_sweep
    from tests.sweep.test_sweeps import PAPER_HASHES

    text = (CONFIGS / "judge-serve.yaml").read_text()
    assert "\ninclude: paper.yaml" in text and "\ntraining:" not in text  # only what differs
    ov = [f"cluster.output_root={tmp_path}", f"data.root={tmp_path / 'absent'}"]
    serve, paper = load_config(CONFIGS / "judge-serve.yaml", ov), load_config(CONFIGS / "paper.yaml", ov)
    assert {r.name: r.hash for r in build_sweep(serve)} == PAPER_HASHES
    assert dataclasses.replace(serve, judge=paper.judge, source="") == dataclasses.replace(paper, source="")
    assert serve.judge.max_concurrency == paper.judge.max_concurrency == 32  # from paper.yaml
    assert [s.name for s in serve.judge.servers] == ["qwen-judge"] and serve.judge.serve_wait_s == 1800


def test_sft_args_checked_against_trl(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  sft_args:\n    max_grad_nrom: 0.5\n    learning_rate: 1.0e-4\n"
                        "    logging_steps: 5\n    packing: 3\n    lr_scheduler_typ: cosine\n    adam_beta2: 0.95\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = str(ei.value)
    assert len(ei.value.problems) == 5, text
    assert (f"{p}:3: training.sft_args.max_grad_nrom: not a field of trl ") in text
    assert "'s SFTConfig; did you mean 'training.sft_args.max_grad_norm'?" in text
    assert f"{p}:4: training.sft_args.learning_rate: emt sets SFTConfig's learning_rate itself; set training.learning_rate instead" in text
    assert f"{p}:5: training.sft_args.logging_steps: emt sets SFTConfig's logging_steps itself; it cannot be changed: " in text
    assert f"{p}:6: training.sft_args.packing: SFTConfig's packing is bool; got 3" in text
    assert "training.sft_args.lr_scheduler_typ: not a field of trl" in text and "did you mean 'training.lr_scheduler'?" in text
    ok = load_config(CONFIGS / "debug.yaml", ["training.sft_args={max_grad_norm: 0.5, adam_epsilon: 1e-8, "
                                              "neftune_noise_alpha: null, optim_target_modules: [q_proj]}"])
    # 1e-8 is a string to YAML 1.1: made the number the field takes, as emt's own float keys are.
    assert ok.training.sft_args == {"max_grad_norm": 0.5, "adam_epsilon": 1e-8, "neftune_noise_alpha": None,
                                    "optim_target_modules": ["q_proj"]}
    assert load_config(CONFIGS / "debug.yaml").training.sft_args == {}


def test_sft_args_without_trl_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from emt.core import config

    config._sft_fields.cache_clear()
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    try:
        with pytest.raises(ConfigError) as ei:
            load_config(CONFIGS / "debug.yaml", ["training.sft_args={max_grad_norm: 0.5}"])
        assert len(ei.value.problems) == 1
        assert ("training.sft_args: checking these names against trl's SFTConfig needs trl (pip install -e '.[train]'), "
                "which cannot be imported here: ModuleNotFoundError") in ei.value.problems[0]
        assert load_config(CONFIGS / "debug.yaml").training.sft_args == {}  # empty: trl is not needed
    finally:
        config._sft_fields.cache_clear()


def test_sft_args_enter_the_run_hash_only_when_given(tmp_path: Path) -> None:
    from emt.sweep.runs import build_sweep
    from tests.sweep.test_sweeps import PAPER_HASHES

    def h(*ov: str) -> str:
        base = [f"cluster.output_root={tmp_path}", f"data.root={tmp_path / 'absent'}"]
        return build_sweep(load_config(CONFIGS / "paper.yaml", base + list(ov)), runs=["medical_mild"])[0].hash

    assert h() == h("training.sft_args={}") == PAPER_HASHES["medical_mild"]
    a, b = h("training.sft_args={max_grad_norm: 0.5}"), h("training.sft_args={max_grad_norm: 0.25}")
    assert len({a, b, PAPER_HASHES["medical_mild"]}) == 3
    assert h("training.sft_args={adam_epsilon: 1e-8}") == h("training.sft_args={adam_epsilon: 1.0e-8}")


def test_judge_batch_flag_checked() -> None:
    """judge.judges[].batch: an OpenAI(-compatible) judge only; judge.batch_poll_s > 0; each one line."""
    ok = load_config(CONFIGS / "debug.yaml", ["judge.judges=[{model: gpt-4.1-mini, batch: true}]",
                                              "judge.batch_poll_s=5"])
    assert ok.judge.judges[0].batch and ok.judge.batch_poll_s == 5
    assert not load_config(CONFIGS / "debug.yaml").judge.judges[0].batch
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["judge.judges=[{backend: local, model: builtin:tiny-judge, batch: true}]",
                                             "judge.batch_poll_s=0"])
    text = str(ei.value)
    assert len(ei.value.problems) == 2, text
    assert "judge.judges.0.batch: the Batch API is OpenAI's" in text and "set batch: false" in text
    assert "judge.batch_poll_s: must be > 0 seconds" in text
