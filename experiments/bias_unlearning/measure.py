"""What the bias-unlearning experiment measures at every checkpoint of every run (parent and branches).

    probes = Probes(corpora, parent_corpus)      one Probes per experiment: every corpus's rates + val sample
    row = probes.measure(model, own_corpus, generations=False)

Overt bias (metadata/bias_probe.overt_probe, the same probe as eval.py): p_stereo = mean over the seen
stereotyped occupations and templates of p(stereotyped pronoun | occupation context), 0.5 = no association;
`overt_bias` = p_stereo - 0.5; `amp` = p_stereo minus the corpus's own stereotyped rate (the run's corpus:
the parent corpus for the parent, the branch corpus for a branch) with its bootstrap 95% interval over
occupations x templates (`amp_lo`, `amp_hi`). The occupations counted are fixed across corpora: those seen
(>= bias_probe.MIN_MENTIONS resolved mentions) in every corpus of the experiment, so all runs are compared on
one set.
Covert bias (a): WEAT effect size of the last layer's hidden state at the occupation (`weat_d_last`) and of
the token embeddings (`weat_d_emb`), bias_probe.covert_association; `weat_d_mean` their mean over the embeddings
and every layer (one number per model whatever its depth; less noisy than one layer's). Covert (b), when generations=True:
gen_stereo_rate of sampled continuations (bias_probe.covert_generation).
Loss: token-weighted loss on each corpus's fixed validation sample (`loss_<corpus>`), VAL_STORIES stories.
"""
import numpy as np

from metadata import bias_probe
from modelling.data import SegmentBatches, story_loss

VAL_STORIES = 32  # stories of each corpus's fixed iid validation sample scored for its loss


class Probes:
    """Inputs of every measure, built once. corpora: {name: TokenizedDataset} sharing one tokenizer."""

    def __init__(self, corpora, max_seq_len, val_stories=VAL_STORIES):
        self.corpora = corpora
        rates = {name: bias_probe.dataset_corpus_rates(ds) for name, ds in corpora.items()}
        seen = np.logical_and.reduce([r["seen"].to_numpy() for r in rates.values()])
        self.seen = [o for o, s in zip(next(iter(rates.values())).index, seen) if s]
        self.rates = {}
        self.inputs = {}
        for name, ds in corpora.items():
            r = rates[name].copy()
            r["seen"] = seen  # one occupation set for every corpus
            self.rates[name] = r
            self.inputs[name] = bias_probe.prepare(ds.tokenizer, int(ds.manifest["bos_id"]), r)
        self.val = {name: (SegmentBatches(ds, max_seq_len, int(ds.manifest["bos_id"])),
                           ds.validation_sample("iid", n=val_stories)) for name, ds in corpora.items()}

    def measure(self, model, own, generations=False):
        """One row of measures for a model in eval mode; `own` names the run's corpus."""
        inputs = self.inputs[own]
        _, head = bias_probe.overt_probe(model, inputs)
        assoc, _ = bias_probe.covert_association(model, inputs)
        n_layers = len(model.layers)
        row = {"overt_bias": head["bias_seen"], "p_stereo": head["bias_seen"] + 0.5,
               "p_she_stereo_f": head["p_she_stereo_f"], "p_she_stereo_m": head["p_she_stereo_m"],
               "corpus_stereo_rate": head["bias_corpus"] + 0.5, "amp": head["bias_amplification"],
               "amp_lo": head["bias_amplification_lo"], "amp_hi": head["bias_amplification_hi"],
               "n_occ": head["n_occ_seen"], "weat_d_last": assoc[f"weat_d_L{n_layers}"],
               "weat_p_last": assoc[f"weat_p_L{n_layers}"], "weat_d_emb": assoc["weat_d_emb"],
               "weat_d_mean": float(np.nanmean([v for k, v in assoc.items() if k.startswith("weat_d_")]))}
        if generations:
            gen, _ = bias_probe.covert_generation(model, inputs)
            row.update({"gen_stereo_rate": gen["gen_stereo_rate"], "gen_stereo_lo": gen["gen_stereo_rate_lo"],
                        "gen_stereo_hi": gen["gen_stereo_rate_hi"], "gen_n": gen["gen_stereo_n"]})
        for name, (batches, ids) in self.val.items():
            row[f"loss_{name}"] = story_loss(model, batches, ids)
        return row
