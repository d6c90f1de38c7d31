# usage: gen_time.sh CHECKOUT  -> wall seconds of `optimize generate` in a fresh process
cd $1 && s=$(date +%s.%N) && PYTHONPATH=$1 /work/main/.venv/bin/python -c "import sys; sys.argv=['optimize','generate','/tmp/ev/e','--prompt','The capital of France is','--max-new-tokens','8']; from optimizer.cli import main; main()" > /dev/null 2>&1; e=$(date +%s.%N); echo "$1 $(echo "$e - $s" | bc)"
