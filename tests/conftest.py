import diffusers
import torch
import transformers

# Two cores here: more threads are slower and make timings flaky.
torch.set_num_threads(1)
# The tiny test pipelines trigger harmless config/deprecation chatter.
diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()
