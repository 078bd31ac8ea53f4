"""The named choices a user picks among, one tuple per parameter, in one light module.

Each library module that acts on one of these parameters takes its tuple from here, and the CLI
offers the same tuple as the flag's choices, so a name is spelled once and `resail --help` lists
every choice without importing torch, OpenCV or FAISS. Choices whose own module is light stay
there: network presets, norms and upsampling modes in synth/presets.py, recipes and mixed
precision in synth/config.py, the sources of imported generators in synth/baselines/authors.py.
"""

SPLITS = ("train", "val")
DATASETS = ("ade20k", "ade20k-outdoor", "cityscapes", "cocostuff", "folder")  # the readers, pipeline/datasets.py
TOY_FORMATS = ("ade20k", "cityscapes", "cocostuff")  # the official formats pipeline/toy.py writes
TOY_PRESETS = tuple(f"{fmt}-real" for fmt in TOY_FORMATS)  # pipeline/toy.py PRESETS: real image sizes and density
COCO_LAYOUTS = ("coco", "spade")  # COCO-Stuff as downloaded, or as SPADE's README has users prepare it

# Stage 1 (pipeline/segments_stage.py, pipeline/decompose.py, pipeline/store.py)
UNCOVERED_THINGS = ("official", "components")  # thing pixels no instance covers: the dataset's rule, or components
ON_ERROR = ("fail", "skip")  # a bad image stops the stage, or is recorded as skipped
CROP_CODECS = ("jpeg", "raw")  # segment crops as JPEG q95 with their exact masks, or lossless RGBA

# Every parallel stage (pipeline/runner.py); where FAISS shards are built and searched (index/)
BACKENDS = ("loky", "dask")
FAISS_DEVICES = ("cpu", "cuda")

# Guidance (pipeline/guidance.py, pipeline/compose.py, pipeline/bake.py) and the distorted ground truth
CHOOSE = ("top1", "sample")  # the match a segment gets: its best, or one drawn among its top-k
COMPOSE_MODES = ("clean", "official")  # clipped pastes without sums, or the official summed formula
COLOR_REFS = ("topk", "class")  # colour reference: a top-k match (official), or any training segment of the class

# Label maps as users hold them (pipeline/labels/files.py)
LABEL_FORMATS = ("auto", "ids", "trainids", "color")
LABEL_OUT_FORMATS = ("ids", "color")

# The classic evaluation segmenters (synth/segmenters/)
SEGMENTERS = ("drn-d-105", "upernet-r101", "deeplabv2-r101")
UPERNET_SCALES = ("multi", "single")  # the authors' five test scales, or one pass at the image's own size
