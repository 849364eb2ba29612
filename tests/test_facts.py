"""Fact injection (issue 18): the fact set's ground truth, the injection schedule (adds exactly the requested
segments at exactly the requested steps, leaves every other segment where the control has it, survives resume),
and the fact measures (exact on a toy model made to memorise one fact; chance on an untrained one)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from common.errors import UserError
from common.paths import set_root
from download import fact_set
from download.fact_set import fact_documents, make_facts
from measures import facts as fm
from modelling.batch_log import BatchLog
from modelling.data import SEGMENT_DTYPE, pack_rows, segment_keys
from modelling.injection import InjectionPlan, add_to_rows, spread_steps
from modelling.model import ModelArgs, Transformer
from tests.fixtures_data import run_stage
from experiments.fact_injection import experiment_fact_injection as exp
from tests.fixtures_run import ONE_THREAD, train_args
from tokenization.dataset import TokenizedDataset

N_FACTS = 21  # 7 conditions x 3 facts: the experiment's smoke size
FACT_DATA = "swfacts"
RUN = dict(dataset=FACT_DATA, vocab_size=512, max_iters=12, eval_interval=6, eval_iters=1, batch_size=4,
           max_seq_len=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, warmup_iters=2,
           n_probe_stories=1, probe_len=16, dtype="float32", n_stories=0, data_seed=3, seed=3)


@pytest.fixture(scope="module")
def fact_ds(tmp_path_factory):
    """1,500 storyworld stories plus a 21-fact set, vocab 512, pretokenized in a workspace of its own."""
    ws = tmp_path_factory.mktemp("facts_ws")
    run_stage(ws, "download/download_datasets.py", "storyworld", "--name", FACT_DATA, "--n_stories", 1500,
              "--shard_size", 1000, "--seed", 5, "--fact_set", N_FACTS)
    for cmd in ("train_vocab", "pretokenize"):
        run_stage(ws, "tokenization/pretokenize.py", cmd, "--dataset", FACT_DATA, "--vocab_size", 512)
    set_root(ws)
    ds = TokenizedDataset(FACT_DATA, 512)
    set_root(None)
    return {"ws": ws, "ds": ds, "facts": json.loads((ws / "data" / FACT_DATA / fact_set.FACTS_FILE).read_text())}


def with_root(ws):
    set_root(ws)  # conftest's autouse fixture resets it after the test


# ---------------------------------------------------------------------------------------------------------
# the fact set

def test_fact_set_is_seeded_unique_and_answers_end_each_phrasing():
    a, b, c = make_facts(40, 1), make_facts(40, 1), make_facts(40, 2)
    assert a == b and a != c
    for key in ("name", "town", "entity"):
        assert len({f[key] for f in a}) == 40  # each side unique: the reverse question has one answer
    assert not {f["name"].lower() for f in a} & {f["town"].lower() for f in a}
    words = fact_set.storyworld_words()
    assert not {f["name"].lower() for f in a} & words and not {f["town"].lower() for f in a} & words
    f = a[0]
    for kind, answer in (("forward", f["town"]), ("reverse", f["entity"]), ("paraphrase_forward", f["town"]),
                         ("paraphrase_reverse", f["entity"])):
        for q in f["questions"][kind]:
            assert q["answer"] == answer and q["prompt"].split() and not q["prompt"].endswith(answer)
    # the questions are prefixes of phrasings: canonical (trained) ones, held-out ones never trained
    assert f["forward"][0] == f"{f['questions']['forward'][0]['prompt']} {f['town']}."
    assert f["reverse"][0] == f"{f['questions']['reverse'][0]['prompt']} {f['entity']}."
    trained = {d["story"] for d in fact_documents(a)}
    assert not trained & set(f["heldout_forward"] + f["heldout_reverse"])
    assert len(trained) == 40 * (len(fact_set.FORWARD) + len(fact_set.REVERSE))
    with pytest.raises(ValueError):
        make_facts(1, 0)


def test_dataset_holds_the_fact_documents_in_their_own_split_and_nowhere_else(fact_ds):
    ds, header = fact_ds["ds"], fact_ds["facts"]
    with_root(fact_ds["ws"])  # ds.text reads the raw shards under the root
    assert header["n_facts"] == N_FACTS and header["seed"] == 5 and header["facts"] == make_facts(N_FACTS, 5)
    fact_ids = ds.story_ids("facts")
    docs = fact_documents(header["facts"])
    assert len(fact_ids) == len(docs) == ds.manifest["n_fact_documents"]
    assert [ds.text(i) for i in fact_ids] == [d["story"] for d in docs]
    assert [ds.record(i)["fact_doc"] for i in fact_ids[:3]] == [d["fact_doc"] for d in docs[:3]]
    assert ds.manifest["n_train"] == len(ds.story_ids("train"))
    # no story of any other split names an entity or a town of the fact set
    names = [f["name"] for f in header["facts"]] + [f["town"] for f in header["facts"]]
    other = np.setdiff1d(ds.story_ids(), fact_ids)
    assert not any(n in ds.text(i) for i in other[::7] for n in names)
    ids = fact_set.document_ids(ds, header["facts"])
    assert ids[(header["facts"][2]["id"], "reverse", 4)] == fact_ids[2 * 20 + 10 + 4]


def test_storyworld_refuses_a_one_fact_set(tmp_path):
    proc = run_stage(tmp_path, "download/download_datasets.py", "storyworld", "--n_stories", 10, "--fact_set", 1,
                     check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: --fact_set 1")


# ---------------------------------------------------------------------------------------------------------
# the injection schedule

def segs(*rows):
    return np.array([(s, st, n, -1) for s, st, n in rows], dtype=SEGMENT_DTYPE)


def test_added_segments_fill_room_first_and_keep_every_packed_segment_in_place():
    base = pack_rows(segs((1, 0, 60), (2, 0, 50), (3, 0, 30), (4, 0, 10)), 64)  # rows: [60], [50, 10], [30]
    extra = segs((90, 0, 20), (91, 0, 4), (92, 0, 40))
    out = add_to_rows(base, extra, 64)
    orig = out[np.isin(out["story_id"], base["story_id"])]
    assert np.array_equal(orig, base)  # same rows, same order within them
    added = {int(s["story_id"]): int(s["row"]) for s in out[out["story_id"] >= 90]}
    assert added == {90: 2, 91: 0, 92: 3}  # first fit in row order; 40 fits nowhere: a new row
    assert np.all(np.diff(out["row"]) >= 0)  # grouped by row, as the batch log stores a step
    fill = np.bincount(out["row"], weights=out["n_tokens"])
    assert fill.max() <= 64
    unpacked = add_to_rows(base, extra, 64, pack=False)
    assert sorted(unpacked[unpacked["story_id"] >= 90]["row"].tolist()) == [3, 4, 5]
    assert spread_steps(10, 20, 3) == [10, 15, 20] and spread_steps(10, 20, 1) == [15] and spread_steps(1, 2, 0) == []


def test_plan_resolves_fact_documents_and_refuses_bad_entries(fact_ds):
    ds, header = fact_ds["ds"], fact_ds["facts"]
    with_root(fact_ds["ws"])
    fid = header["facts"][1]["id"]
    plan = InjectionPlan({"format": 1, "injections": [{"step": 4, "fact_id": fid, "direction": "reverse",
                                                        "phrasing": 3}, {"step": 4, "story_id": 7},
                                                       {"step": 9, "fact_id": fid}]}, ds, 64)
    doc = ds.story_ids("facts")[20 + 10 + 3]
    chunks = -(-int(ds.n_tokens([7])[0]) // 64)  # a story injects all of its segments
    assert plan.segments(4)["story_id"].tolist() == [doc] + [7] * chunks and plan.segments(5).size == 0
    assert plan.segments(9)["n_tokens"].tolist() == [ds.n_tokens([ds.story_ids("facts")[20]])[0]]
    assert plan.summary()["n_segments"] == 2 + chunks and plan.n_after(8) == 1 and plan.n_after(9) == 0
    bad = [({"format": 1, "injections": [{"step": 0, "story_id": 1}]}, "step"),
           ({"format": 1, "injections": [{"step": 2, "story_id": len(ds)}]}, "story_id"),
           ({"format": 1, "injections": [{"step": 2, "fact_id": "nope"}]}, "nope"),
           ({"format": 1, "injections": [{"step": 2, "fact_id": fid, "phrasing": 10}]}, "phrasing"),
           ({"injections": []}, "format")]
    for plan_dict, needle in bad:
        with pytest.raises(UserError, match=needle):
            InjectionPlan(plan_dict, ds, 64)


def write_plan(path, header):
    """Two facts at steps 3 and 8 (one forward, one reverse), one fact twice at step 5."""
    f0, f1 = header["facts"][0]["id"], header["facts"][1]["id"]
    plan = {"format": 1, "injections": [{"step": 3, "fact_id": f0}, {"step": 8, "fact_id": f1, "direction": "reverse"},
                                        {"step": 5, "fact_id": f0, "phrasing": 2},
                                        {"step": 5, "fact_id": f0, "phrasing": 2}]}
    path.write_text(json.dumps(plan))
    return plan


def added_and_kept(inject_step, control_step):
    """(the segments the injected run adds at a step, the ones it shares with its control): a shared one must sit
    in the control's row and place, so the kept ones equal the control's step."""
    shared = np.isin(segment_keys(inject_step), segment_keys(control_step))
    return inject_step[~shared], inject_step[shared]


@pytest.mark.slow
def test_schedule_adds_exactly_the_plan_and_resume_keeps_it(fact_ds):
    """Control vs injected run: identical except the plan's segments at its steps; a run stopped at step 6 and
    resumed equals the uninterrupted one; a changed plan is refused on resume."""
    ws, ds, header = fact_ds["ws"], fact_ds["ds"], fact_ds["facts"]
    write_plan(ws / "plan.json", header)
    run_stage(ws, "modelling/train.py", *train_args(out_dir="out/control", **RUN), env=ONE_THREAD)
    run_stage(ws, "modelling/train.py", *train_args(out_dir="out/inject", inject_plan="plan.json", **RUN),
              env=ONE_THREAD)
    control, inject = BatchLog(ws / "out/control"), BatchLog(ws / "out/inject")
    docs = ds.story_ids("facts")
    expected = {3: [docs[0]], 5: [docs[2], docs[2]], 8: [docs[30]]}
    assert len(control) == len(inject) == 12
    for k in range(1, 13):
        extra, kept = added_and_kept(inject.step(k), control.step(k))
        assert sorted(extra["story_id"].tolist()) == expected.get(k, [])
        assert np.array_equal(kept, control.step(k))  # every sampled segment in the control's row and place
    info = json.loads((ws / "out/inject/config.json").read_text())
    assert info["injection"]["n_segments"] == 4 and json.loads((ws / "out/inject/injection_plan.json").read_text())

    # stop at step 6 (a checkpoint), resume to 12: the same batch log as the uninterrupted run
    short = {**RUN, "max_iters": 6}
    run_stage(ws, "modelling/train.py", *train_args(out_dir="out/resumed", inject_plan="plan.json", **short),
              env=ONE_THREAD)
    run_stage(ws, "modelling/train.py", *train_args(out_dir="out/resumed", init_from="resume", max_iters=12),
              env=ONE_THREAD)
    resumed = BatchLog(ws / "out/resumed")
    assert np.array_equal(resumed.steps(1, 12), inject.steps(1, 12))
    # a changed plan cannot be resumed into
    shutil.copy(ws / "out/resumed/ckpt/step_000006.pt", ws / "out/resumed/ckpt/resume_src.pt")
    plan = json.loads((ws / "plan.json").read_text())
    plan["injections"].append({"step": 11, "story_id": 1})
    (ws / "plan.json").write_text(json.dumps(plan))
    proc = run_stage(ws, "modelling/train.py", *train_args(out_dir="out/resumed", init_from="resume",
                                                            max_iters=12), check=False, env=ONE_THREAD)
    assert proc.returncode != 0 and "injection plan" in proc.stderr.strip().splitlines()[-1]


def test_train_refuses_a_missing_plan_with_one_error_line(fact_ds):
    ws = fact_ds["ws"]
    proc = run_stage(ws, "modelling/train.py", *train_args(out_dir="out/noplan", inject_plan="missing.json", **RUN),
                     check=False, env=ONE_THREAD)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: --inject_plan=") and "missing.json" in last
    assert not (ws / "out/noplan/config.json").exists()


# ---------------------------------------------------------------------------------------------------------
# the measures

def tiny_model(vocab, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=vocab, multiple_of=16,
                                 max_seq_len=64)).eval()


def memorise(model, token_lists, steps=150):
    """Train the model on the token sequences until it has them by heart (full-batch Adam)."""
    width = max(map(len, token_lists))
    x = torch.zeros(len(token_lists), width - 1, dtype=torch.long)
    y = torch.full((len(token_lists), width - 1), -1, dtype=torch.long)
    for r, t in enumerate(token_lists):
        x[r, :len(t) - 1], y[r, :len(t) - 1] = torch.tensor(t[:-1]), torch.tensor(t[1:])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(x, y)
        model.last_loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_untrained_model_answers_at_chance(fact_ds):
    ds, facts = fact_ds["ds"], fact_ds["facts"]["facts"]
    queries = fm.build_queries(facts, n_candidates=6)
    assert len(queries) == N_FACTS * 8 * 6  # 1 + 1 + 3 + 3 questions per fact, 6 candidates each
    table = fm.score_facts(tiny_model(ds.tokenizer.vocab_size()), ds.tokenizer, ds.manifest["bos_id"], queries)
    assert set(table["kind"]) == set(fm.KINDS) and len(table) == N_FACTS * 4
    mean, low, high, _ = fm.mean_ci(table["p_choice"])
    assert low <= 1 / 6 <= high and abs(mean - 1 / 6) < 0.02  # untrained: near-uniform over candidates
    assert table["exact"].sum() == 0
    v = ds.tokenizer.vocab_size()
    per_token = table["logp"] / table["n_answer_tokens"]
    assert np.allclose(per_token, -np.log(v), atol=0.25)  # ~uniform next-token distribution


def test_measures_are_exact_on_a_model_that_memorised_one_fact(fact_ds):
    """Trained on one fact's canonical forward phrasing only: that fact is recalled forward (p_choice ~ 1, greedy
    exact), its reverse is not; teacher-forced 'exact' equals real greedy decoding for every question; logp is
    the sum of the answer tokens' log-probabilities computed by hand."""
    ds, facts = fact_ds["ds"], fact_ds["facts"]["facts"]
    sp, bos = ds.tokenizer, ds.manifest["bos_id"]
    fact = facts[0]
    model = memorise(tiny_model(sp.vocab_size()), [[bos] + sp.encode(fact["forward"][0])])
    queries = fm.build_queries(facts, n_candidates=6)
    table = fm.score_facts(model, sp, bos, queries).set_index(["fact_id", "kind"])
    assert table.loc[(fact["id"], "forward"), "exact"] == 1.0
    assert table.loc[(fact["id"], "forward"), "p_choice"] > 0.99
    assert table.loc[(fact["id"], "reverse"), "exact"] == 0.0
    assert table.loc[(fact["id"], "reverse"), "p_choice"] < 0.9  # the reverse was never shown
    # greedy generation agrees with the teacher-forced exact match on every question's true answer
    scored = fm.score_queries(model, sp, bos, queries[queries["is_true"]])
    for row in scored.itertuples():
        prompt, answer = [bos] + sp.encode(row.prompt), sp.encode(row.candidate)
        out = model.generate(torch.tensor([prompt]), len(answer))[0, len(prompt):].tolist()
        assert (out == answer) == row.exact
    # logp by hand for the forward question
    q = fact["questions"]["forward"][0]
    seq = [bos] + sp.encode(q["prompt"]) + sp.encode(q["answer"])
    n = len(sp.encode(q["answer"]))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]])), -1)[0]
    by_hand = sum(float(logp[len(seq) - 1 - n + k, seq[len(seq) - n + k]]) for k in range(n))
    row = scored[(scored["fact_id"] == fact["id"]) & (scored["kind"] == "forward")]
    assert abs(float(row["logp"].iloc[0]) - by_hand) < 1e-4


def test_decay_fits_tell_power_law_from_exponential():
    d = np.arange(1, 60, dtype=float)
    power = fm.fit_decay(d, 0.9 * d ** -0.4)
    assert power["better"] == "power" and abs(power["power"]["b"] - 0.4) < 1e-3
    expo = fm.fit_decay(d, 0.8 * np.exp(-d / 15))
    assert expo["better"] == "exponential" and abs(expo["exponential"]["tau"] - 15) < 1e-2
    assert fm.fit_decay([1, 2], [1, 0.5])["better"] is None  # too few points: no verdict


def test_acquisition_retention_and_ratio_on_known_curves():
    curve = pd.DataFrame({"step": [10, 20, 30, 40, 50, 60], "value": [0.1, 0.1, 0.5, 0.9, 0.6, 0.4]})
    assert fm.acquisition_steps(curve, first_exposure=15, threshold=0.5) == 15  # step 30 - 15
    assert np.isnan(fm.acquisition_steps(curve, first_exposure=15, threshold=0.95))
    null = pd.DataFrame({"step": curve["step"], "value": 0.1})
    ret = fm.retention(curve, null, last_exposure=40)
    assert ret["delta"].tolist() == [10, 20] and np.allclose(ret["retained"], [0.5 / 0.8, 0.3 / 0.8])
    assert fm.reverse_forward_ratio([0.4, 0.6], [0.1, 0.1]) == pytest.approx(0.2)
    assert np.isnan(fm.reverse_forward_ratio([0.0, -0.1], [0.1, 0.1]))
    mean, low, high, n = fm.mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and low < 2 < high


# ---------------------------------------------------------------------------------------------------------
# the experiment

def test_experiment_plan_deals_every_condition_its_facts_and_exposures():
    fact_ids = [f"f{i:03d}" for i in range(60)]
    groups = exp.assign_groups(fact_ids, seed=1, facts_per_group=8)
    assert groups != exp.assign_groups(fact_ids, seed=2, facts_per_group=8)  # dealt afresh per seed
    assert sorted(pd.Series(groups).value_counts().to_dict().items()) == sorted((c, 8) for c in exp.CONDITIONS)
    plan = exp.make_plan(groups, n_steps=400, repeats=100)
    seen = exp.exposures(plan)
    for fid, cond in groups.items():
        if cond == "never":
            assert fid not in seen
            continue
        first, last, n = seen[fid]
        lo, hi = exp.window_steps(cond, 400)
        assert lo <= first <= last <= hi
        assert n == {"once": 1, "fwd_rev": 200}.get(cond, 100)
        mine = [e for e in plan["injections"] if e["fact_id"] == fid]
        if cond == "para10":
            assert sorted({e["phrasing"] for e in mine}) == list(range(10))
        if cond == "fwd_rev":
            assert sum(e.get("direction") == "reverse" for e in mine) == 100
    with pytest.raises(UserError, match="--fact_set 56"):
        exp.assign_groups(fact_ids[:50], seed=0, facts_per_group=8)


@pytest.mark.slow
def test_batch_size_runs_inject_the_same_segments_at_the_same_token_positions(fact_ds):
    """The batch-size pair (2 vs 8 segments per step, equal sampled segments): each run is its own control plus
    exactly its plan's segments at its plan's steps; the small run's plan is the large run's with steps x 4, so
    both see the same sampled segments in the same order and each injection after exactly the same ones."""
    ws, ds, header = fact_ds["ws"], fact_ds["ds"], fact_ds["facts"]
    groups = exp.assign_groups([f["id"] for f in header["facts"]], seed=0, facts_per_group=3)
    cfg = {"repeats": 4, "batch": dict(small=2, large=8, large_steps=6)}
    small, large = exp.batch_plans(groups, cfg)
    assert [e["step"] for e in small["injections"]] == [4 * e["step"] for e in large["injections"]]
    assert {e["fact_id"] for e in large["injections"]} == {f for f, c in groups.items() if c in exp.BATCH_CONDITIONS}
    logs = {}
    for name, plan, batch, steps in (("small", small, 2, 24), ("large", large, 8, 6)):
        (ws / f"batch_{name}.json").write_text(json.dumps(plan))
        args = {**RUN, "batch_size": batch, "max_iters": steps}
        for arm, extra in (("control", {}), ("inject", {"inject_plan": f"batch_{name}.json"})):
            run_stage(ws, "modelling/train.py", *train_args(out_dir=f"out/bs_{name}_{arm}", **args, **extra),
                      env=ONE_THREAD)
            logs[name, arm] = BatchLog(ws / f"out/bs_{name}_{arm}")
        with_root(ws)
        resolved = InjectionPlan(plan, ds, RUN["max_seq_len"])
        for k in range(1, steps + 1):
            added, kept = added_and_kept(logs[name, "inject"].step(k), logs[name, "control"].step(k))
            assert np.array_equal(kept, logs[name, "control"].step(k))
            assert sorted(added["story_id"].tolist()) == sorted(resolved.segments(k)["story_id"].tolist())
    for k in range(1, 7):  # large step k = small steps 4k-3..4k: the same sampled segments, the same injections
        small_steps = logs["small", "inject"].steps(4 * k - 3, 4 * k)
        large_step = logs["large", "inject"].step(k)
        sampled = [np.sort(segment_keys(logs[n, "control"].steps(a, b))) for n, a, b in
                   (("small", 4 * k - 3, 4 * k), ("large", k, k))]
        assert len(sampled[0]) == 8 and np.array_equal(*sampled)
        facts = ds.story_ids("facts")
        assert sorted(small_steps["story_id"][np.isin(small_steps["story_id"], facts)].tolist()) == \
            sorted(large_step["story_id"][np.isin(large_step["story_id"], facts)].tolist())
        injected_small = logs["small", "inject"].steps(4 * k - 3, 4 * k - 1)  # nothing before the block's last step
        assert not np.isin(injected_small["story_id"], facts).any()


@pytest.mark.slow
def test_experiment_smoke_runs_scores_and_reports(fact_ds):
    """The smoke size end to end through the kit's runner: four runs (injected, control, small and large batch),
    each one's checkpoint grid scored, the report with its null checks at chance
    (a 40-step dim-16 model learns no fact), description.json for the dashboard; a re-run scores nothing new."""
    ws = fact_ds["ws"]
    args = ["--size", "smoke", "--dataset", FACT_DATA, "--name", "smoke", "--root", ws]
    run_stage(ws, "experiments/fact_injection/experiment_fact_injection.py", *args, env=ONE_THREAD)
    exp_dir = ws / "out/experiments/fact_injection/smoke"
    results = pd.read_csv(exp_dir / "results.csv")
    # 3 fact pairs: underpowered; the comparisons pooling the 3 forward-only groups (9 pairs) can reject
    assert len(results) == len(exp.analysis.PRIMARY) and (results["tested"] == (results["n"] == 9)).all()
    scored = pd.read_csv(exp_dir / "runs/inject_s0/facts.csv")
    assert len(scored) == len(set(scored["step"])) * N_FACTS * len(fm.KINDS)
    nulls = pd.read_csv(exp_dir / "nulls.csv")
    assert nulls["covers_chance"].all() and np.allclose(nulls["mean"], 1 / 3, atol=0.05)
    from experiments.common.describe import read_description
    description = read_description(exp_dir)
    assert description["kind"] == "fact_injection" and len(description["primary"]) == len(results)
    assert "NOT reproduced" in (exp_dir / "report.md").read_text()  # said plainly, not hidden
    run_stage(ws, "experiments/fact_injection/experiment_fact_injection.py", *args, env=ONE_THREAD)
    state = json.loads((exp_dir / "experiment.json").read_text())
    assert state["status"]["inject_s0"]["scored_new"] == 0 and state["status"]["inject_s0"]["train"] == "trained"
    assert {r["what"] for r in state["invocations"]} == {"trained 4 runs, scored %d checkpoints" % sum(
        len(set(pd.read_csv(exp_dir / f"runs/{arm}_s0/facts.csv")["step"])) for arm in exp.ARMS)}  # the re-run: none
    plan = run_stage(ws, "experiments/fact_injection/experiment_fact_injection.py", *args, "--plan", env=ONE_THREAD)
    lines = [ln for ln in plan.stdout.splitlines() if "train.py" in ln]
    assert len(lines) == 4 and not any("&&" in ln for ln in lines)  # train only: the scoring is the script's
