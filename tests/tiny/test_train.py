import torch

from nag_guidance.tiny.train import Recipe, StageTimer, grid, step_generator, student_inputs, training_loop


def test_grids_are_the_uniform_inference_grids():
    assert grid(1)[1] == (999,)
    sigmas, timesteps = grid(4)
    assert timesteps == (999, 749, 499, 249)
    assert abs(sigmas[2] - 0.4995) < 1e-4 and sigmas[-1] == 0.0
    assert set(grid(4)[0]) <= set(grid(16)[0])


def test_step_generator_is_a_pure_function_of_its_seed():
    a = torch.randn(4, generator=step_generator(3, 7))
    assert torch.equal(a, torch.randn(4, generator=step_generator(3, 7)))
    assert not torch.equal(a, torch.randn(4, generator=step_generator(3, 8)))


def test_training_loop_resumes_from_its_checkpoint(tmp_path):
    def run(stop_after: int | None) -> tuple[list[int], torch.nn.Linear]:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        seen = []
        loop = training_loop(tmp_path, "toy", 6, 2, {"model": model}, optimizer, StageTimer(tmp_path))
        for step in loop:
            if step == stop_after:
                break
            seen.append(step)
            loss = model(torch.full((1, 2), float(step))).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return seen, model

    first, _ = run(stop_after=3)
    second, resumed = run(stop_after=None)
    assert first == [0, 1, 2] and second == [2, 3, 4, 5]  # step 2 was never saved, so it is redone
    (tmp_path / "toy" / "checkpoint.pt").unlink()
    _, straight = run(stop_after=None)
    assert torch.equal(resumed.weight, straight.weight)


def test_student_states_on_the_straight_line_and_at_pure_noise():
    noise, end = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    pool = {"noise": noise, "end": end, "states": torch.randn(3, 3, 4, 16, 16)}
    index, level = torch.arange(3), torch.tensor([0, 2, 3])
    x = student_inputs(pool, index, level, torch.ones(3, dtype=torch.long), None, None, torch.Generator())
    sigmas = grid(4)[0]
    assert torch.equal(x[0], noise[0])
    assert torch.allclose(x[1], sigmas[2] * noise[1] + (1 - sigmas[2]) * end[1])
    teacher = student_inputs(pool, index, level, torch.zeros(3, dtype=torch.long), None, None, torch.Generator())
    assert torch.equal(teacher[2], pool["states"][2, 2])


def test_scaled_recipe_shrinks_every_step_count():
    small = Recipe().scaled(0.01)
    assert small.teacher_steps < Recipe().teacher_steps and small.student_steps >= 2
    assert small.teacher_batch == Recipe().teacher_batch
