"""python -m jaxlab.export --workdir RUN --out FOLDER [--step N]

Writes a trained LM run as a Hugging Face GPT-2 folder (config.json, model.safetensors,
tokenizer files) for transformers.GPT2LMHeadModel.from_pretrained(FOLDER).
"""
import argparse

from jaxlab.trainers import lm


def main(argv=None):
  """Command line entry: writes a run's checkpoint as a GPT-2 folder and prints the folder's path.

  `argv` defaults to sys.argv[1:]: --workdir RUN, --out FOLDER, optional --step N (default: the latest)."""
  p = argparse.ArgumentParser(prog="python -m jaxlab.export", description=__doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--step", type=int, default=None)
  args = p.parse_args(argv)
  print(lm.export_hf(args.workdir, args.out, args.step))


if __name__ == "__main__":
  main()
