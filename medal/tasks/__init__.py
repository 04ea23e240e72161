"""Task registry: `medal <task>` name -> module that defines a Hydra `main()` and its primary config.

Each task module lives in this package and is imported lazily, so `medal --help` stays fast.
"""

from __future__ import annotations

TASKS: dict[str, tuple[str, str]] = {
    # name: (module, one-line description)
    "phantoms": ("medal.tasks.phantoms", "generate synthetic hand radiographs in the RSNA layout"),
    "check-data": ("medal.tasks.check_data", "validate a data set and print a summary and every problem"),
    "segment": ("medal.tasks.segment", "coarse masks + active-learning hand segmentation + RoI crops"),
    "annotate": ("medal.tasks.annotate", "hand masks and gold standards in the browser: what the pipeline waits for"),
    "enhance": ("medal.tasks.enhance", "train the GAN enhancer (or CLAHE/none) and enhance every RoI"),
    "pretrain": ("medal.tasks.pretrain", "pretrain a backbone (self-supervised or on a source task) for model.weights"),
    "boneage": ("medal.tasks.boneage", "train, validate and test a bone age regressor (fine-tune modes, PTL)"),
    "cam": ("medal.tasks.cam", "class activation maps of a trained bone age model"),
    "table": ("medal.tasks.table", "ablation tables and loss curves from runs (folders or W&B)"),
    "export": ("medal.tasks.export", "a portable model bundle (weights, settings, calibration) from finished runs"),
    "recalibrate": ("medal.tasks.recalibrate", "rewrite a bundle's interval calibration and OOD threshold on your own labelled cases"),
    "predict": ("medal.tasks.predict", "bone age with an interval for new radiographs, through a model bundle"),
    "pipeline": ("medal.tasks.pipeline", "the whole system end to end, resumable, with a report"),
}
