"""Dense (level-0) NER F1 and XNLI accuracy of the testbed model after 300 steps, per twin given on the command line.

Usage: python bench/downstream_level0.py syn-en syn-ar   (smoke-grid sizes and lr; one thread)
"""
import sys, tempfile, time, json, torch
torch.set_num_threads(1)
from lnsub.trainables.imp import run_cell
from lnsub.trainables.spec import make_spec
storage = tempfile.mkdtemp(prefix="lnsub-ds-")
sizes = {"ner": dict(max_length=32, train_size=1000, valid_size=200), "xnli": dict(max_length=48, train_size=2000, valid_size=300)}
for lang in sys.argv[1:]:
    for task in ("ner", "xnli"):
        t = time.time()
        spec = make_spec(task, lang, model="testbed", lr=1e-3, batch_size=32, levels=0, steps=300, **sizes[task])
        r = run_cell(spec, storage)
        print(task, lang, str(r)[:400], f"{time.time()-t:.0f}s", flush=True)
