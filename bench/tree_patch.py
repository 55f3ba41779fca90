"""
The gateway section's "before" gateway from another checkout: ``S2SGATE_BENCH_TREE`` names
a work tree of the commit to compare (``git worktree add /tmp/before <commit>``), put first
on ``sys.path`` so its ``s2sgate`` is the one imported.  ``python bench/run.py --only gateway
--before-patch tree_patch`` then compares that commit (before) with this one (now) in one run.
"""
import os
import sys

tree = os.environ.get("S2SGATE_BENCH_TREE")
if not tree:
    raise SystemExit("bench/tree_patch.py: set S2SGATE_BENCH_TREE to the work tree to compare")
sys.path.insert(0, tree)
