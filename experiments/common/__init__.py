"""The experiment kit: statistics, a runner and a description every experiment shares.

    from experiments.common import stats, runner, describe

stats — the statistics standard (paired over seeds; see stats.py's docstring):
    compare_paired(diffs | (a, b), alpha=0.05, n_primary=1) -> dict row: n, mean_a, mean_b, diff, ci_lo, ci_hi,
        sd_diff, p (exact sign-flip; Monte Carlo, seeded, beyond 20 pairs), p_method, min_p, threshold,
        mde (80% power, outcome units), mde_sd, g_av, g_ci_lo, g_ci_hi, tested, significant, reason.
        n < 2 -> NaN with a reason; zero variance never raises.
    sign_flip_p(diffs) -> (p, method); t_interval(diffs) -> (mean, lo, hi); min_attainable_p(n) = 2 / 2^n;
    mde_paired(sd, n, alpha, power=0.8); hedges_g_av(a, b) -> (g, lo, hi); bh_q(pvalues);
    design_power(n_pairs, alpha, n_primary) -> (tested, reason); needed_pairs(alpha, n_primary);
    crossed_variance(values[init, order]) -> {sd_init, sd_order, sd_residual}; mean_band(matrix[runs, steps]).

runner — conditions × seeds through the real modelling/train.py and eval.py:
    make_run(name, condition, steps, train={...}, eval_args={...}, **labels) -> run dict
    plan_lines(runs, exp_dir) -> shell commands (--plan); run_all(exp_dir, design, runs, jobs) runs what is
    unfinished (resume, skip finished) and keeps experiment.json; check_design(n_pairs, alpha, n_primary) ->
    {tested, reason, ...}: a design that cannot reach p < alpha / n_primary is reported as underpowered;
    add_arguments(parser) adds --name, --size smoke|demo|full, --jobs, --plan.

describe — description.json, which the dashboard's Experiments page reads to draw any experiment:
    write_run_curves(exp_dir, runs, columns) -> curve entries (copies of each run's summary columns);
    write_description(exp_dir, kind, title, report=, tables=, figures=, curve_runs=, curve_columns=, primary=,
    baseline=); read_description(exp_dir); find_experiments(out_root); run_curves; condition_bands.

An experiment lives in out/experiments/<kind>/<name>/ (runs/, logs/, experiment.json, its CSVs, figures/,
curves/, report.md, description.json); a committed example mirrors that under experiments/<kind>/<name>/.
"""
