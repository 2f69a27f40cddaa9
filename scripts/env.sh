# Source this to build with plain cargo outside make:  . scripts/env.sh
# It points tch's build at the PyTorch 2.11.0 venv that scripts/setup.sh creates.
SALN_VENV="${SALN_VENV:-$HOME/.cache/saln/venv}"
export VIRTUAL_ENV="$SALN_VENV"
export PATH="$SALN_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
