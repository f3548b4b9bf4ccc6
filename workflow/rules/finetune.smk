# Stage 3b: self-critical fine-tuning. A model with an `scst:` section in the config gets a
# second model, <model>+scst, trained by the training rule from <model>'s kept weights
# (capmodel train --init-from) with objective scst. Its own settings file holds the SCST
# settings, so a change of them reruns this job only; sampling, evaluation and reports
# treat it as any other model.


use rule train_model as finetune_model with:
    input:
        data=DATA_DIR,
        gradcheck="results/gradcheck.csv",
        settings="results/models/{model}/settings.json",
        start=lambda wildcards: f"results/models/{FINE_TUNED[wildcards.model]}/model.npz",
        start_meta=lambda wildcards: f"results/models/{FINE_TUNED[wildcards.model]}/model.json",
    wildcard_constraints:
        model=FINE_TUNED_PATTERN,
    params:
        out_dir=lambda wildcards, output: Path(output.model).parent,
        resume="results/resume/{model}",
        init_from=lambda wildcards, input: ["--init-from", input.start],
