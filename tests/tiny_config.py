"""Config overrides shared by the engine tests: a model of a few thousand parameters at 64x64 (a step
takes milliseconds on one core) and a quiet, deterministic run loop."""

TINY_MODEL = [
    "transforms.input_size=64",
    "model.kwargs.dims=[8, 16, 16, 32, 32]",
    "model.kwargs.groups=[2, 2, 2, 2, 2]",
    "model.kwargs.word_dim=16",
    "model.kwargs.text_dim=32",
    "model.kwargs.text_ffn=32",
    "model.kwargs.text_heads=2",
    "model.kwargs.num_heads=2",
    "model.kwargs.attn_min_dim=16",
    "model.kwargs.neck_dim=16",
]

TINY_RUN = [
    "run.device=cpu",
    # the demo preset's speed recipe off: tests pin exact fp32 numerics and plain epochs
    "run.amp=none",
    "run.max_steps=null",
    "run.max_minutes=null",
    "run.curriculum_epochs=0",
    "run.num_workers=0",
    "run.num_threads=1",
    "run.tensorboard=false",
    "run.progress=false",
    "run.batch_size=4",
    "run.log_every=1",
    "run.eval_interval=0",
    "run.save_interval=0",
    "data.eval_limit=6",
    "data.test_splits=[]",
]
