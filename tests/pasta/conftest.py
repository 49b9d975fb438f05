import sys
from pathlib import Path

# Test helpers (tiny models, byte tokenizer) are imported by name; pytest runs with --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))
