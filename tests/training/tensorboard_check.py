"""What TensorBoard itself reads from a run directory's event files: its EventAccumulator (the reader
behind TensorBoard's scalar dashboard when it loads event files in Python), with its default purge of
orphaned data (a SessionLog START drops the points at its step and later read before it).
Usage: tensorboard_check.py RUN_DIR; prints one JSON object {tag: [[step, value], ...]} (every point
kept, in the order the reader holds them) and the number of event files read as "_files"."""
import glob
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator

run_dir = sys.argv[1]
acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
out["_files"] = len(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
print(json.dumps(out))
