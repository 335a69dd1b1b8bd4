import torch

# Two cores here: more threads are slower and make timings flaky.
torch.set_num_threads(1)
