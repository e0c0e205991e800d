#!/usr/bin/env bash
# llama.cpp's IQ3 mixes (IQ3_XXS, IQ3_XS, IQ3_S, IQ3_M) written by moetool,
# checked as tests/cli_iquant_mixes.sh checks the IQ2/IQ1 ones (a test of
# its own so that the two run side by side).
MT_MIXES="iq3_xxs:23 iq3_xs:22 iq3_s:26 iq3_m:27" exec bash "$(dirname "$0")/cli_iquant_mixes.sh"
