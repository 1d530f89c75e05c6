"""`lorafit` command line: parse, call the library, turn LorafitError into one line and exit 2."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from . import __version__
from .errors import Interrupted, LorafitError


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML config file (a run's config.yaml reproduces it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set adapter.r=4 --set optim.lr=3e-4 (repeatable)")


TRAIN_DESCRIPTION = """\
Start here, with no config:
  lorafit train --data reviews.csv                      # columns, task, split, lengths, layout, lr... chosen
  lorafit train --data reviews.csv --model DIR --test test.csv --set train.epochs=2
Each choice is printed with its reason and written, commented, to RUN/config.yaml; edit that file and
  lorafit train --config RUN/config.yaml --out RUN2      # the same settings, or yours
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lorafit", description="LoRA-family fine-tuning of text classifiers under a parameter budget.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--version", action="version", version=f"lorafit {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and write a run directory", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=TRAIN_DESCRIPTION)
    t.add_argument("--data", metavar="FILE", help="zero-config: a labelled table (csv, tsv, jsonl, json, parquet), a "
                   "folder of one text file per class (pos.txt, neg.txt: one text a line) or of one folder per class "
                   "(class_name/*.txt); every setting is chosen from it, with its reason, into RUN/config.yaml")
    t.add_argument("--model", metavar="NAME", help="with --data: hub model id or local folder (default: roberta-base; "
                   "offline, give a folder)")
    t.add_argument("--budget", type=int, metavar="N", help="with --data: most trainable parameters (default: 1,000,000)")
    t.add_argument("--test", metavar="FILE", help="with --data: a held-out labelled file, evaluated after training")
    _config_args(t, required=False)
    t.add_argument("--out", help="run directory (default: runs/<config or data name>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run from its last checkpoint, with its own config.yaml")
    t.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: one run each in OUT/seed-N on one validation "
                                   "set, then mean ± sd per metric in OUT/seeds.json and OUT/seeds.md")

    s = sub.add_parser("sweep", help="Optuna search over the config's sweep.space (median pruning, resumable)")
    _config_args(s)
    s.add_argument("--trials", type=int, required=True, help="total finished trials wanted (a resumed study counts its own)")
    s.add_argument("--out", help="folder for trials/, best.yaml, trials.csv, sweep.png (default: runs/sweep-<config name>)")
    s.add_argument("--storage", help="SQLAlchemy URL of the study database (default: sqlite:///OUT/sweep.db)")
    s.add_argument("--heartbeat", type=int, default=None, metavar="SECONDS",
                   help="seconds between a running trial's heartbeats (default 60); a worker silent for two is taken "
                   "for dead and its trial retried")
    s.add_argument("--study", help="study name within the storage (default: the config file's name)")

    b = sub.add_parser("budget", help="trainable-parameter table against budget.max_trainable (no weights loaded)")
    _config_args(b)
    b.add_argument("--num-labels", type=int, help="number of classes (default: data.label_names, else read from data)")
    b.add_argument("--solve", action="store_true",
                   help="list the LoRA layouts (targets, layers, rank, head, LayerNorms) that fit budget.max_trainable, "
                        "largest first, and pick one")

    e = sub.add_parser("evaluate", help="metrics of a finished run on a labelled file")
    e.add_argument("run_dir", help="a finished run's directory (lorafit train --out)")
    e.add_argument("--data", required=True, help="labelled file with the run's text and label columns; its labels are "
                                                 "checked against the run's by value")
    e.add_argument("--label-column", help="column holding the labels (default: the run's data.label_column)")
    _input_args(e)

    pr = sub.add_parser("predict", help="write ID,label predictions for an unlabelled file")
    pr.add_argument("run_dir", nargs="+", metavar="RUN",
                    help="a finished run's directory (lorafit train --out); several: one pass over the input, columns "
                         "label_<run> (and logit_<run>_<label>, prob_<run>_<label>) per run, named after its folder")
    pr.add_argument("--input", required=True, help="csv / tsv / jsonl / json / txt (one text per line), optionally "
                                                    ".gz / .bz2 / .xz; parquet; pickle only with --allow-pickle; - or a "
                                                    "pipe: read as CSV unless --input-format says otherwise")
    pr.add_argument("--output", required=True, help="CSV to write: ID,label in input order, label as in the training "
                                                     "data; - for standard output; a symbolic link is written through")
    pr.add_argument("--id-column", help="column of IDs kept in the output (default: ID, id or Id if present, else the "
                                        "row index)")
    _input_args(pr)
    pr.add_argument("--batch-size", type=int, default=128, help="texts per model forward, sorted by length so each "
                    "batch pads little (default 128); lower it if memory runs short")
    pr.add_argument("--with-logits", action="store_true", help="add one logit_<label> column per class")
    pr.add_argument("--resume", action="store_true",
                    help="continue a predict that stopped (killed, Ctrl-C, a bad row fixed) from the rows it kept in "
                         "OUTPUT.partial; refused if the input, a run or an option changed")
    pr.add_argument("--overwrite", action="store_true",
                    help="start again, discarding the rows a stopped predict left in OUTPUT.partial")
    pr.add_argument("--on-bad-row", choices=("stop", "skip"), default="stop",
                    help="a malformed row (wrong field count, invalid JSON, bytes not UTF-8, a text cell that is not "
                         "text, a duplicate ID): stop, naming it, with the rows before it kept for --resume (default); "
                         "or skip it and list it in OUTPUT.bad_rows.jsonl")
    pr.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                    help="input rows read, computed and committed at a time (default 8192): memory holds one chunk, "
                         "a kill loses at most one; texts are sorted by length within a chunk")
    pr.add_argument("--probs", action="store_true", help="add one prob_<label> column per label: single_label, the softmax "
                                                        "calibrated by the run's temperature (calibration.json); "
                                                        "multi_label, each label's sigmoid (its set: prob >= its "
                                                        "threshold in thresholds.json); not for regression")
    pr.add_argument("--ray", metavar="ADDRESS", help="predict on a Ray cluster (pip install 'lorafit[ray]'): local (one "
                    "on this machine, stopped at the end), auto (the cluster this machine is in) or ray://HEAD:10001; "
                    "the same output as without it")
    _serve_args(sub)
    _export_args(sub)
    return ap


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: "(default: X)" added unless the text already says it."""

    def _get_help_string(self, action):
        return action.help if "(default" in (action.help or "") else super()._get_help_string(action)


def _serve_args(sub) -> None:
    sv = sub.add_parser("serve", help="HTTP API over finished runs, adapters over one base sharing its weights",
                        formatter_class=_DefaultsShown)
    from .serve.settings import LOG_LEVELS, defaults

    d = defaults()  # ServeSettings' own: the library and the command cannot drift apart
    sv.add_argument("runs", nargs="*", metavar="[NAME=]RUN_DIR", help="runs to serve, loaded at start and never unloaded; "
                                                                   "named by NAME= or their folder's name")
    sv.add_argument("--adapters-dir", metavar="DIR", help="every run folder in DIR is served by its folder name, loaded on "
                                                          "its first request (default: none)")
    sv.add_argument("--max-loaded", type=int, default=d["max_loaded"], help="most runs of --adapters-dir loaded at once; "
                    "beyond it the least recently used is unloaded (default: %(default)s, no limit)")
    sv.add_argument("--max-adapter-memory", type=float, default=d["max_adapter_memory"], metavar="MB",
                    help="most MB the loaded runs of --adapters-dir may hold on their own (adapter, head; the shared base "
                         "not counted); beyond it the least recently used is unloaded (default: %(default)s, no limit)")
    sv.add_argument("--host", default=d["host"], help="address to bind (default: %(default)s; another needs "
                                                         "--api-key-file or --insecure)")
    sv.add_argument("--port", type=int, default=d["port"], help="port; 0: any free one, printed at start")
    sv.add_argument("--max-batch", type=int, default=d["max_batch"], help="most texts per model forward")
    sv.add_argument("--max-wait-ms", type=float, default=d["max_wait_ms"], help="how long the first waiting text waits for others")
    sv.add_argument("--max-round", type=int, default=d["max_round"], help="most waiting texts of one run a round takes, sorted by length and "
                                                             "cut into forwards (default: %(default)s, i.e. 4 x --max-batch)")
    sv.add_argument("--streams", type=int, default=d["streams"], help="worker threads computing rounds side by side, sharing the cores "
                                                           "(default: %(default)s, i.e. 2 on a CPU, 1 on a GPU)")
    sv.add_argument("--queue", type=int, default=d["queue"], help="most requests waiting or running; more get 503 + Retry-After")
    sv.add_argument("--max-texts", type=int, default=d["max_texts"], help="most texts per request")
    sv.add_argument("--max-chars", type=int, default=d["max_chars"], help="most characters per text")
    sv.add_argument("--api-key-file", help="file holding the key every route but /healthz needs as 'Authorization: Bearer KEY' "
                                           "(default: none, no key: a loopback --host only, unless --insecure)")
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a key (default: off)")
    sv.add_argument("--grace", type=float, default=d["grace"], help="seconds in-flight requests get to finish on SIGTERM; those that cannot are "
                                                           "answered 503 + Retry-After, then exit 0")
    sv.add_argument("--log-level", default=d["log_level"], choices=LOG_LEVELS,
                    help="uvicorn's log level")
    sv.add_argument("--no-mixed", dest="mixed", action="store_false", default=d["mixed"],
                    help="compute each run's texts in forwards of their own, not in forwards shared by the runs over one "
                         "base (the anchor bench/serve_many.py compares with; default: shared)")


def _export_args(sub) -> None:
    x = sub.add_parser("export", help="a finished run as an ONNX model or a standalone transformers folder, checked "
                                      "against lorafit's predictions before it is written")
    x.add_argument("run_dir", help="a finished run's directory (lorafit train --out)")
    x.add_argument("--format", required=True, help="onnx (ONNX Runtime, every head) or merged (a transformers folder "
                                                    "AutoModelForSequenceClassification loads; heads model, lora_dense)")
    x.add_argument("--out", required=True, help="folder to write (refused if it exists, unless --overwrite)")
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    x.add_argument("--check", metavar="FILE", help="texts to check the export on (default: the run's validation texts)")
    x.add_argument("--quantize", help="int8: also write model.int8.onnx (ONNX Runtime dynamic quantisation)")
    from .export.settings import defaults

    x.add_argument("--min-agreement", type=float, default=defaults()["min_agreement"], metavar="PCT",
                   help="refuse an int8 model whose labels agree with fp32 on fewer than PCT%% of the check texts "
                        "(default %(default)s)")
    _input_args(x)


def _input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", action="append", metavar="NAME[,NAME...]",
                   help="column(s) holding the text, as many as the run's data.text_columns, in that order "
                        "(repeatable or comma-separated; default: the run's)")
    p.add_argument("--text-pair-column", metavar="NAME",
                   help="column holding the second text of each pair (default: the run's data.text_pair_column)")
    p.add_argument("--delimiter", help="field separator of a .csv/.tsv file: one character, or tab (default: a tab for "
                                       ".tsv; for .csv a comma, unless the header line has none, then sniffed among ; tab |)")
    p.add_argument("--input-format", metavar="FORMAT",
                   help="csv, tsv, jsonl, json, txt or parquet: the format of a stream (-, a pipe, /dev/stdin) or of a "
                        "file name without a suffix, which are read as CSV otherwise; given, it overrides the suffix")
    p.add_argument("--allow-pickle", action="store_true", help="accept .pkl input (unpickling runs code)")


def cmd_train(args) -> int:
    from .config import load_config  # torch loads with .train, after the config is read: a typo fails at once

    if args.resume:
        # the run's own config only: anything else would not continue the same run
        extra = [f for f, v in (("--config", args.config), ("--set", args.overrides), ("--out", args.out),
                                ("--overwrite", args.overwrite)) if v]
        if extra:
            raise LorafitError(f"--resume: continues RUN_DIR with its own config.yaml; drop {', '.join(extra)}")
        run_dir = Path(args.resume)
        from .runs.directory import check_run_dir

        check_run_dir(run_dir, overwrite=False, resume=True)
        from .train.run import run_training

        run_training(load_config(run_dir / "config.yaml", warn=None), run_dir, resume=True)
        return 0
    zero = [f for f, v in (("--model", args.model), ("--budget", args.budget), ("--test", args.test)) if v is not None]
    if args.data and args.config:
        raise LorafitError("train: give --data (every setting chosen from the data) or --config, not both; to change "
                           "a choice, use --set with --data, or edit the RUN/config.yaml it writes")
    if zero and not args.data:
        raise LorafitError(f"train: {', '.join(zero)} go with --data; with --config, use --set (e.g. --set model.name=...)")
    if not args.config and not args.data:
        raise LorafitError("train: give --data FILE (zero-config) or --config FILE (or --resume RUN_DIR to continue a run)")
    notes = None
    if args.data:
        from .autoconfig import auto_config

        cfg, notes = auto_config(args.data, model=args.model, budget=args.budget, test=args.test, sets=args.overrides)
        out = Path(args.out) if args.out else Path("runs") / Path(args.data.rstrip("/\\")).stem
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.seeds is not None:
        from .train.seeds import parse_seeds, run_seeds

        run_seeds(cfg, parse_seeds(args.seeds), out, overwrite=args.overwrite, command="lorafit " + shlex.join(args.argv))
        return 0
    from .train.run import run_training

    header = ["lorafit " + shlex.join(args.argv), "every key with a comment was chosen from the data (its reason "
              "follows); reproduce or edit: lorafit train --config THIS_FILE --out NEW_RUN"] if notes else None
    run_training(cfg, out, overwrite=args.overwrite, notes=notes, header=header)
    return 0


def cmd_sweep(args) -> int:
    from .config import load_config
    from .train.sweep import run_sweep

    if args.trials < 1:
        raise LorafitError("--trials: give a positive number of trials")
    cfg = load_config(args.config, args.overrides)
    stem = Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{stem}"
    run_sweep(cfg, args.trials, out, storage=args.storage, name=args.study or stem, heartbeat=args.heartbeat)
    return 0


def label_names_for_budget(cfg, num_labels: int | None) -> list[str]:
    if num_labels:
        return [str(i) for i in range(num_labels)]
    if cfg.data.label_names:
        return list(cfg.data.label_names)
    from .data.examples import load_labelled

    _, names, _ = load_labelled(cfg.data.train, cfg.data, cfg.data.train_split, None, "data.train")
    return names


def cmd_budget(args) -> int:
    from .config import load_config
    from .model import budget_table, format_table
    from .model.solver import resolve_rank

    cfg = load_config(args.config, args.overrides)
    names = label_names_for_budget(cfg, args.num_labels)
    if args.solve:
        return solve_budget(cfg, names, args)
    cfg, note = resolve_rank(cfg, names)
    if note:
        print(note)
    rows, total = budget_table(cfg, names)
    print(format_table(rows, total, cfg.budget.max_trainable))  # its last line: trainable: N / budget: M
    budget = cfg.budget.max_trainable
    return 2 if budget is not None and sum(r.total for r in rows) > budget else 0


def solve_budget(cfg, names: list[str], args) -> int:
    from .model.solver import count_exact, format_layouts, pick, smallest, solve

    layouts, notes = solve(cfg, names)
    budget = cfg.budget.max_trainable
    if not layouts:
        # a budget below every usual layout: offer LoRA on one kind of linear, or on the last layer only
        need = smallest(cfg, names)
        layouts, notes = solve(cfg, names, wide=True)
        if layouts and need is not None:
            notes.append(f"nothing in the standard space fits {budget:,} trainable parameters: its smallest layout, "
                         f"{need.describe()}, needs {need.trainable:,}; listed instead: LoRA on one kind of linear "
                         "layer, or on the last layer only")
    print("\n".join(format_layouts(layouts, notes, budget)))
    best = pick(layouts)
    if best is None:
        need = smallest(cfg, names, wide=True)
        print(f"no layout fits {budget:,} trainable parameters" + ("" if need is None else
              f": the smallest, {need.describe()}, needs {need.trainable:,}; raise budget.max_trainable to {need.trainable:,}"))
        return 2
    exact = count_exact(best.apply(cfg), names)
    if exact != best.trainable:
        raise RuntimeError(f"solver: closed form {best.trainable:,} != PEFT count {exact:,} for {best}")
    print(f"pick: {best.describe()}")
    print(f"  {pick_command(args.config, args.overrides, best.overrides())}")
    print(f"trainable: {exact:,} / budget: {budget:,} (pick, counted by PEFT on the meta device)")
    return 0


def pick_command(config: str, user_sets: list[str], pick_sets: list[str]) -> str:
    """`lorafit train` with the user's own --set flags (budget, data, model...) and the pick's, which
    replace the user's for the keys it sets; quoted for a POSIX shell."""
    picked = {s.split("=", 1)[0] for s in pick_sets}
    kept = [s for s in user_sets if s.split("=", 1)[0].strip() not in picked]
    return shlex.join(["lorafit", "train", "--config", str(config), *[w for s in kept + pick_sets for w in ("--set", s)]])


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_file

    metrics = evaluate_file(args.run_dir, args.data, allow_pickle=args.allow_pickle, text_columns=args.text_column,
                            label_column=args.label_column, delimiter=args.delimiter,
                            text_pair_column=args.text_pair_column, input_format=args.input_format,
                            log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args) -> int:
    # oneDNN keeps a primitive (with its reordered weights) per op and shape, up to 1,024: a long predict
    # meets every batch x length shape and its RSS climbed ~250 MB over 100k rows on a tiny model until
    # the cache filled; without the cache, RSS stays flat and MiniLM predicted as fast (bench/RESULTS.md).
    # Read when oneDNN first runs, so set before any forward; a user's own value wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    from .predict import CHUNK_ROWS, predict_file

    argv = [a for a in args.argv if a not in ("--resume", "--overwrite")]  # the command to resume with
    n = predict_file(args.run_dir, args.input, args.output, allow_pickle=args.allow_pickle,
                     batch_size=args.batch_size, with_logits=args.with_logits, text_columns=args.text_column,
                     id_column=args.id_column, delimiter=args.delimiter, text_pair_column=args.text_pair_column,
                     probs=args.probs, input_format=args.input_format, resume=args.resume, overwrite=args.overwrite,
                     on_bad_row=args.on_bad_row, chunk_rows=args.chunk_rows or CHUNK_ROWS,
                     command="lorafit " + shlex.join(argv), ray=args.ray, log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {n:,} predictions to {'standard output' if args.output == '-' else args.output}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    import dataclasses

    from .serve import ServeSettings, serve

    return serve(ServeSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeSettings)}))


def cmd_export(args) -> int:
    from .export import ExportSettings, export_run

    settings = ExportSettings(args.run_dir, args.format, args.out, check=args.check, quantize=args.quantize,
                              min_agreement=args.min_agreement, overwrite=args.overwrite,
                              allow_pickle=args.allow_pickle, text_columns=args.text_column,
                              delimiter=args.delimiter, input_format=args.input_format)
    export_run(settings, log=lambda line: print(line, file=sys.stderr))
    return 0


COMMANDS = {"serve": cmd_serve, "export": cmd_export, "train": cmd_train, "budget": cmd_budget, "sweep": cmd_sweep, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in outputs that name their command
    if not args.debug:
        import warnings

        # Libraries' deprecation notices are meant for lorafit's developers; users can do nothing about
        # them, and they would bury the one-line error or the run log.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if args.command != "budget":  # the commands that run a model; budget counts on the meta device
        from .speed.memory import request_huge_pages

        request_huge_pages()
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that has gone (`| head -1`) shows here, not at interpreter exit
        return code
    except Interrupted as e:  # what was kept and what to run: a message, not an error
        print(e, file=sys.stderr)
        return e.exit_code
    except LorafitError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the Python docs' recipe: nothing more can reach the reader, and the exit flush must not fail either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
    except OSError as e:  # the disk, not the input: still one line (the traceback with --debug)
        if args.debug:
            raise
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 2


def _os_error(e: OSError) -> str:
    if e.strerror and e.filename:
        to = f" -> {e.filename2}" if e.filename2 else ""
        return f"{e.filename}{to}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__
