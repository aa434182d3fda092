"""Reads ddpm-rs's TensorBoard event files with the tensorboard package's own readers and prints
what they find as JSON, for tensorboard_cli.rs beside this file (which makes the assertions).

    tensorboard_read.py events LOGDIR   scalars, images and text of the run folder LOGDIR as
                                        EventAccumulator loads them, with its purge of orphaned
                                        steps ("purged", what TensorBoard shows) and without ("raw")
    tensorboard_read.py records FILE    how many records tensorboard's record reader accepts
                                        before it refuses one (its CRC check) or reaches the end
"""
import json
import math
import struct
import sys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) from a PNG's IHDR chunk, or None when data is not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return list(struct.unpack(">II", data[16:24]))


def finite_or_none(x):
    return None if math.isnan(x) or math.isinf(x) else x


def load(logdir, purge):
    from tensorboard.backend.event_processing import event_accumulator as ea

    keep_all = {ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    acc = ea.EventAccumulator(logdir, size_guidance=keep_all, purge_orphaned_data=purge)
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        t: [[e.step, finite_or_none(e.value)] for e in acc.Scalars(t)] for t in tags[ea.SCALARS]
    }
    images = {
        t: [[e.step, e.width, e.height, png_size(e.encoded_image_string)] for e in acc.Images(t)]
        for t in tags[ea.IMAGES]
    }
    tensors = {}
    for t in tags[ea.TENSORS]:
        plugin = acc.SummaryMetadata(t).plugin_data.plugin_name
        tensors[t] = [
            [e.step, plugin, [s.decode("utf-8") for s in e.tensor_proto.string_val]]
            for e in acc.Tensors(t)
        ]
    return {"scalars": scalars, "images": images, "tensors": tensors}


def records(path):
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    reader = PyRecordReader_New(path)
    read = 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return {"read": read, "refused": None}
        except errors.DataLossError as e:
            return {"read": read, "refused": str(e)}
        read += 1


def main():
    import tensorboard

    mode, path = sys.argv[1], sys.argv[2]
    if mode == "events":
        out = {"purged": load(path, True), "raw": load(path, False)}
    elif mode == "records":
        out = records(path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out["tensorboard_version"] = tensorboard.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
