# LinearInt4's CUDA tests (tests/test_custom_ops_int4.py) with the settings given (VAR=value ...; none:
# the defaults), into /tmp/gd/tests.log with their exit status last: int4_batch.sh and int4_replay_ab.sh
# run it in the background while their engines build.
env "$@" python3 -m pytest -q -p no:cacheprovider tests/test_custom_ops_int4.py > /tmp/gd/tests.log 2>&1
echo "tests rc $?" >> /tmp/gd/tests.log
