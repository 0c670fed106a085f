"""The built-in synthetic referring world: CLEVR-like 2.5D scenes with referring expressions, masks and
VQA questions, written in the real on-disk formats (COCO instances, gRefCOCO, refer pickles, CLEVR).

Pure Python (numpy, Pillow, pycocotools); the world is a pure function of ``SynthConfig`` (each image
is drawn from its own ``SeedSequence(seed, spawn_key=(1, index))``, so any worker count writes the same
bytes).

Splits (by image). Decision: with ``cogent=True`` (the default) the splits ``train``, ``val``, ``testA``
and ``testB`` are all drawn under CoGenT condition A (cubes only gray/blue/brown/yellow, cylinders only
red/green/purple/cyan, spheres any colour); ``testA`` holds i.i.d. held-out scenes, ``testB`` held-out
crowded scenes (8-10 objects), and ``cogentB`` is drawn under condition B (the cube and cylinder colour
sets swapped), so a model trained on ``train`` meets unseen colour-shape combinations only there.
No-target "absent" expressions only name combinations the image's condition allows (so absence is
never predictable from the words alone). With ``cogent=False`` there is no constraint and no
``cogentB`` split (its fraction is spread over the others). Default fractions: train .70, val .10,
testA .10, testB .05, cogentB .05.

Modules: ``spec`` (vocabulary), ``config`` (``SynthConfig``), ``geometry`` / ``scene`` / ``render``
(drawing), ``programs`` (executor), ``expressions`` / ``questions`` (generators), ``writer``.
"""

from langground.data.synthetic.config import (
    EXPRESSION_FAMILIES,
    NO_TARGET_FAMILIES,
    QUESTION_FAMILIES,
    SPLITS,
    SynthConfig,
)
from langground.data.synthetic.expressions import Expression, generate_expressions
from langground.data.synthetic.programs import (
    answer_program,
    execute_program,
    redundant_nodes,
    run_program,
    without_node,
)
from langground.data.synthetic.questions import Question, generate_questions
from langground.data.synthetic.render import Rendered, render_scene
from langground.data.synthetic.scene import Scene, SceneObject, compute_relationships, sample_scene
from langground.data.synthetic.writer import build_image, generate_world

__all__ = [
    "EXPRESSION_FAMILIES",
    "NO_TARGET_FAMILIES",
    "QUESTION_FAMILIES",
    "SPLITS",
    "Expression",
    "Question",
    "Rendered",
    "Scene",
    "SceneObject",
    "SynthConfig",
    "answer_program",
    "build_image",
    "compute_relationships",
    "execute_program",
    "generate_expressions",
    "generate_questions",
    "generate_world",
    "redundant_nodes",
    "render_scene",
    "run_program",
    "sample_scene",
    "without_node",
]
