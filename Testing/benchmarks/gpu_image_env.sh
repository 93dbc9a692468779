# Sourced by the GPU scripts: on the bare GPU image (no diffusers, pydicom or monai), install the wheels
# carried in .whl/ (the device tool's `carry`) and this package into /tmp/site, and put them on the paths.
if ! python3 -c "import diffusers, pydicom, monai" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl .
  export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
fi
export PYTHONUNBUFFERED=1
