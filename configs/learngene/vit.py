"""TLEG on digits with a ViT: teacher, scratch, auxiliary (learngene) and descendants.

  # 1. a teacher: a small CNN (model.kind=cnn; about 99% on MNIST, 98%+ on the sklearn digits)
  python -m jaxlab.main --config configs/learngene/vit.py:teacher --workdir runs/lg/teacher
  # 2. the auxiliary model (depth 6, layers expanded from the learngene), distilled
  #    (DeiT's soft loss: distill.normalize=batch_classes; "batch" for KL per example)
  python -m jaxlab.main --config configs/learngene/vit.py:auxiliary --workdir runs/lg/aux \
      distill.teacher_workdir=runs/lg/teacher
  # 3. descendants of any depth, initialised from the learngene, trained normally
  python -m jaxlab.main --config configs/learngene/vit.py:descendant --workdir runs/lg/des4 \
      learngene.gene_workdir=runs/lg/aux model.num_layers=4
  # baseline: the same ViT from scratch (add distill.teacher_workdir=... for scratch + KD)
  python -m jaxlab.main --config configs/learngene/vit.py:scratch --workdir runs/lg/scratch4 model.num_layers=4
  # control: a plain depth-6 ViT (trained like the auxiliary model) resampled to depth 4
  python -m jaxlab.main --config configs/learngene/vit.py:scratch --workdir runs/lg/plain6 model.num_layers=6 \
      distill.teacher_workdir=runs/lg/teacher
  python -m jaxlab.main --config configs/learngene/vit.py:interpolated --workdir runs/lg/interp4 \
      learngene.gene_workdir=runs/lg/plain6 model.num_layers=4

Arguments may end in ",mnist" (e.g. `:teacher,mnist`) to use MNIST from ../shared/data
instead of scikit-learn's digits (the fresh-machine default). bench/learngene_mnist.py runs
the whole study (with its own model size and schedule, as overrides of this config).
"""
from jaxlab.trainers import classify

ROLES = ("teacher", "scratch", "auxiliary", "descendant", "interpolated")


def get_config(arg=None):
  role, _, dataset = (arg or "scratch").partition(",")
  c = classify.default_config()
  if dataset == "mnist":
    c.data.update(name="mnist", source_dir="shared:images/mnist")
    c.model.update(patch_size=7)  # 16 patches of 7x7: CPU-sized
  elif dataset not in ("", "digits"):
    raise ValueError(f"unknown dataset {dataset!r}; use digits or mnist")
  if role == "teacher":
    c.model.kind = "cnn"
  elif role == "auxiliary":
    c.model.num_layers = 6
    c.learngene.mode = "auxiliary"
  elif role in ("descendant", "interpolated"):
    c.learngene.mode = role
  elif role != "scratch":
    raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
  c.lock()
  return c
