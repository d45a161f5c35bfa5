#!/bin/bash
# Reassembles ONNX Runtime GPU on the accelerator machine from what travelled:
# the core library, the CUDA provider (non-sm_90 cubins zeroed so it fits the
# carry limit) from /tmp/stash, and CUDA 13 / cuDNN 9 from the image's Python.
set -u
here="${1:-/tmp/stash}"
mkdir -p /tmp/ort
unxz() { if command -v xz >/dev/null; then xz -dc "$1" > "$2"; else python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; fi; }
[ -f /tmp/ort/libonnxruntime.so.1.31.1 ] || unxz "$here/libonnxruntime.so.1.31.1.xz" /tmp/ort/libonnxruntime.so.1.31.1
[ -f /tmp/ort/libonnxruntime_providers_cuda.so ] || unxz "$here/libonnxruntime_providers_cuda.so.xz" /tmp/ort/libonnxruntime_providers_cuda.so
cp "$here/libonnxruntime_providers_shared.so" /tmp/ort/
ln -sf libonnxruntime.so.1.31.1 /tmp/ort/libonnxruntime.so
sha256sum /tmp/ort/libonnxruntime.so.1.31.1 /tmp/ort/libonnxruntime_providers_cuda.so
cudalibs=$(find / -xdev \( -name 'libcublasLt.so.13*' -o -name 'libcudnn.so.9*' -o -name 'libcurand.so.10*' -o -name 'libcudart.so.13*' -o -name 'libcufft.so.12*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
echo "cuda libs: $cudalibs"
export LD_LIBRARY_PATH="/tmp/ort:$cudalibs:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
echo "export LD_LIBRARY_PATH=$LD_LIBRARY_PATH" > /tmp/ort/env.sh
ldd /tmp/ort/libonnxruntime_providers_cuda.so | grep -E 'not found|cublas|cudart|curand' 
