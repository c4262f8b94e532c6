"""ManiSkill memory tasks: names, registration, the one-sentence refusals, the task logic on the CPU
simulation without a renderer (obs_mode="state", render_backend="none"), and, on a machine with a
Vulkan-capable GPU, RGB observations and GPU-parallel stepping.

The task-logic tests drive the Panda with a proportional end-effector controller to a position the
test computes from the task's hidden state, so a touch is a real touch in the simulation."""

from __future__ import annotations

import importlib.util

import gymnasium
import pytest
import torch

import envs.maniskill
from agents.train import main as train_main
from envs.maniskill import (MISSING_DEPENDENCY, TASKS, VULKAN_REQUIRED, ManiSkillUnavailable, make_maniskill_env,
                            maniskill_env_id, maniskill_names)
from scripts.bench_maniskill import main as bench_main

pytestmark = [
    # mani-skill 3.0.1 calls np.isnan on torch tensors (numpy 2 deprecates what that relies on), and
    # SAPIEN says on import that it uses its own libvulkan; whether rendering works is tested below.
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Failed to find system libvulkan:UserWarning"),
]

HAS_MANISKILL = importlib.util.find_spec("mani_skill") is not None
needs_maniskill = pytest.mark.skipif(not HAS_MANISKILL, reason="needs mani-skill (pip install 'memrl[maniskill]')")
NEEDS_RENDERER = "needs a Vulkan-capable GPU (ManiSkill renderer)"


def _renderer_available() -> bool:
    from envs.maniskill.adapter import renderer_available

    return renderer_available()


@pytest.fixture
def renderer():
    if not HAS_MANISKILL or not _renderer_available():
        pytest.skip(NEEDS_RENDERER)


@pytest.fixture
def no_renderer():
    if _renderer_available():
        pytest.skip("this machine can render, so it cannot show the refusal")


# -- names and refusals (no mani-skill needed) -----------------------------------------------


def test_every_family_and_level_has_a_short_name():
    assert maniskill_names() == sorted(
        [f"maniskill-remember-{family}-{n}" for family in ("color", "shape") for n in (3, 5, 9)]
        + [f"maniskill-remember-shape-and-color-{level}" for level in ("3x2", "3x3", "5x3")]
        + [f"maniskill-shell-game-{mode}" for mode in ("touch", "push", "pick")]
        + [f"maniskill-{family}-of-colors-{n}" for family in ("bunch", "seq", "chain") for n in (3, 5, 7)]
        + [f"maniskill-intercept{grab}-{speed}" for grab in ("", "-grab") for speed in ("slow", "medium", "fast")]
        + [f"maniskill-rotate-{rule}-{targets}" for rule in ("lenient", "strict") for targets in ("pos", "pos-neg")]
        + ["maniskill-take-it-back"]
        + [f"maniskill-touch-remember-color-{n}" for n in (3, 5, 9)] + ["maniskill-touch-shell-game-swap"]
        + [f"maniskill-touch-{family}-of-colors-{n}" for family in ("seq", "chain") for n in (3, 5, 7)]
    )
    assert maniskill_env_id("maniskill-remember-color-5") == "memrl/RememberColor5-v0"
    assert maniskill_env_id("maniskill-touch-remember-color-5") == "memrl/TouchRememberColor5-v0"
    assert maniskill_env_id("maniskill-intercept-grab-fast") == "memrl/InterceptGrabFast-v0"
    assert maniskill_env_id("maniskill-intercept-slow") == "memrl/InterceptSlow-v0"
    assert maniskill_env_id("maniskill-rotate-strict-pos-neg") == "memrl/RotateStrictPosNeg-v0"
    assert maniskill_env_id("maniskill-rotate-lenient-pos") == "memrl/RotateLenientPos-v0"
    assert len(envs.maniskill.MIKASA_TASKS) == 32  # every MIKASA-Robo task at every published level


def test_an_unknown_task_is_refused_in_one_sentence_naming_the_choices(tmp_path, capsys):
    expected = "unknown ManiSkill task 'maniskill-remember-colour-3'; choose one of: "
    with pytest.raises(ValueError, match=expected) as error:
        maniskill_env_id("maniskill-remember-colour-3")
    assert "maniskill-shell-game-touch" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", "maniskill-shell-game", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "unknown ManiSkill task 'maniskill-shell-game'" in stderr and "maniskill-touch-seq-of-colors-7" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_missing_mani_skill_is_one_sentence(monkeypatch):
    monkeypatch.setattr(envs.maniskill.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ManiSkillUnavailable, match="pip install 'memrl\\[maniskill\\]'") as error:
        make_maniskill_env("maniskill-remember-color-3", num_envs=1, device="cpu")
    assert str(error.value) == MISSING_DEPENDENCY


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU, so the benchmark would run")
def test_the_benchmark_refuses_without_a_gpu_in_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--num-envs", "256"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "needs a CUDA GPU that renders with Vulkan" in stderr and len(stderr.strip().splitlines()) == 1


# -- with mani-skill installed ---------------------------------------------------------------


@needs_maniskill
def test_every_task_is_registered_with_maniskill_and_gymnasium():
    from mani_skill.utils.registration import REGISTERED_ENVS

    import envs.maniskill.adapter  # noqa: F401

    for env_id in TASKS.values():
        assert env_id in REGISTERED_ENVS and env_id in gymnasium.registry
    assert REGISTERED_ENVS["memrl/TouchRememberColor9-v0"].max_episode_steps == 60
    assert REGISTERED_ENVS["memrl/RememberColor9-v0"].max_episode_steps == 60
    assert REGISTERED_ENVS["memrl/ShellGamePick-v0"].max_episode_steps == 90
    assert REGISTERED_ENVS["memrl/TouchChainOfColors7-v0"].default_kwargs == {"sequence_length": 7, "ordered": True}


@needs_maniskill
def test_without_a_vulkan_gpu_building_a_task_is_refused_in_one_sentence(no_renderer, tmp_path, capsys):
    with pytest.raises(ManiSkillUnavailable) as error:
        make_maniskill_env("maniskill-remember-color-3", num_envs=1, device="cpu")
    assert str(error.value) == VULKAN_REQUIRED and "Vulkan-capable GPU" in VULKAN_REQUIRED
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", "maniskill-touch-chain-of-colors-3", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr == f"train-agent: error: cannot build the env 'maniskill-touch-chain-of-colors-3': {VULKAN_REQUIRED}\n"
    assert not (tmp_path / "run").exists()


# -- task logic on the CPU simulation, no renderer --------------------------------------------

HOVER = 0.1
"""Height above an object's top at which the test controller travels between objects."""


@pytest.fixture(scope="module")
def make_state_env():
    """gymnasium.make for a task on the CPU simulation without a renderer; closes them at the end."""
    if not HAS_MANISKILL:
        pytest.skip("needs mani-skill (pip install 'memrl[maniskill]')")
    import envs.maniskill.tasks  # noqa: F401

    made = []

    def make(env_id: str, **kwargs):
        env = gymnasium.make(env_id, num_envs=1, obs_mode="state", render_backend="none", sim_backend="physx_cpu",
                             **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def _step_towards(env, goal: torch.Tensor):
    """One step of a proportional controller moving the TCP to `goal` [3]: it rises to the travel
    height before moving sideways, and goes down only once above the goal."""
    tcp = env.unwrapped.agent.tcp.pose.p[0]
    target = goal.clone()
    if (goal[:2] - tcp[:2]).norm() > 0.02:
        target[2] = goal[2] + HOVER
        if tcp[2] < goal[2] + HOVER - 0.02:
            target[:2] = tcp[:2]
    action = torch.zeros(1, 4)
    action[0, :3] = ((target - tcp) / 0.1).clamp(-1, 1)
    action[0, 3] = -1.0
    return env.step(action)


def _wait_for_choice(env):
    base = env.unwrapped
    while int(base.elapsed_steps[0]) < base._choice_start:
        env.step(torch.zeros(1, 4))


def _touch(env, object_index: int, max_steps: int = 60):
    """Drive the TCP down onto object `object_index` (where it is now); -> (reward, terminated, info) of the
    step that touched it."""
    base = env.unwrapped
    for _ in range(max_steps):
        every_env = torch.arange(1)
        position = base._object_positions(base.elapsed_steps.long(), every_env)[0, object_index]
        top = position.clone()
        top[2] += base.object_half_sizes[object_index, 2]
        top[2] -= 0.01  # press on the top face
        _, reward, terminated, truncated, info = _step_towards(env, top)
        if info["touched"][0].any():
            assert info["touched"][0, object_index], "the controller touched another object on its way"
            return float(reward[0]), bool(terminated[0]), info
        assert not (terminated | truncated).any(), "the episode ended before the touch"
    raise AssertionError(f"object {object_index} not reached in {max_steps} steps")


@needs_maniskill
def test_remember_color_observation_holds_no_answer(make_state_env):
    env = make_state_env("memrl/TouchRememberColor5-v0")
    env.reset(seed=0)
    base = env.unwrapped
    for _ in range(base._choice_start + 1):
        obs, *_ = env.step(torch.zeros(1, 4))
    assert obs.shape == (1, 9 + 9 + 7)  # joint positions, joint velocities, TCP pose: nothing of the task
    base.target[:] = (base.target + 1) % base.num_colors
    base.slots[:] = base.slots.roll(1, dims=1)
    assert torch.equal(base.get_obs(), obs)


@needs_maniskill
@pytest.mark.parametrize("right", [True, False], ids=["target", "distractor"])
def test_remember_color_succeeds_on_the_shown_colour_only(make_state_env, right):
    env = make_state_env("memrl/TouchRememberColor3-v0")
    env.reset(seed=1)
    base = env.unwrapped
    positions = base._object_positions(torch.zeros(1, dtype=torch.long), torch.arange(1))[0]
    shown = int(positions[:, 2].argmax())  # the one cube above the floor's parking depth
    assert shown == int(base.target[0]) and positions[shown, 2] > 0 and (positions[:, 2] > 0).sum() == 1
    _wait_for_choice(env)
    colour = shown if right else (shown + 1) % base.num_colors
    reward, terminated, info = _touch(env, colour)
    assert terminated and bool(info["success"][0]) == right and bool(info["fail"][0]) != right
    assert reward == (1.0 if right else -1.0)


@needs_maniskill
def test_the_dense_reward_pulls_towards_the_answer_in_the_choice_phase_only(make_state_env):
    env = make_state_env("memrl/TouchRememberColor3-v0", reward_mode="dense")
    env.reset(seed=6)
    base = env.unwrapped
    rewards = [float(env.step(torch.zeros(1, 4))[1][0]) for _ in range(base._choice_start)]
    assert rewards[:-1] == [0.0] * (base._choice_start - 1) and 0 < rewards[-1] <= 0.1
    reward, terminated, _ = _touch(env, int(base.target[0]))
    assert terminated and 1.05 < reward <= 1.1  # success plus the reaching term, the TCP on the cube's top


@needs_maniskill
def test_remember_color_touches_before_the_choice_phase_do_not_count(make_state_env):
    env = make_state_env("memrl/TouchRememberColor3-v0")
    env.reset(seed=2)
    base = env.unwrapped
    for _ in range(base._choice_start - 1):  # press on the shown cube while it is shown
        show = torch.tensor([0.0, 0.0, 2 * base.CUBE_HALF_SIZE - 0.01])
        _, reward, terminated, _, info = _step_towards(env, show)
        assert not terminated[0] and not info["touched"].any() and reward[0] == 0


@needs_maniskill
def test_remember_color_reset_draws_new_colours_and_places(make_state_env):
    env = make_state_env("memrl/TouchRememberColor9-v0")
    base = env.unwrapped
    targets, layouts = set(), set()
    for seed in range(12):
        env.reset(seed=seed)
        targets.add(int(base.target[0]))
        layouts.add(tuple(base.slots[0].tolist()))
        assert sorted(base.slots[0].tolist()) == list(range(9))  # nine colours on nine distinct slots
    assert len(targets) >= 4 and len(layouts) == 12


@needs_maniskill
@pytest.mark.parametrize("right", [True, False], ids=["ball-cup", "empty-cup"])
def test_shell_game_succeeds_on_the_cup_that_hides_the_ball(make_state_env, right):
    env = make_state_env("memrl/TouchShellGameSwap-v0")
    env.reset(seed=3)
    base = env.unwrapped
    ball_cup = int(base.target[0])
    start = base._object_positions(torch.zeros(1, dtype=torch.long), torch.arange(1))[0]
    assert (start[1:, 2] < 0).all() and start[0, 2] > 0  # only the ball is shown, on its cup's slot
    assert torch.allclose(start[0, :2], base.CUP_SLOTS[ball_cup])
    _wait_for_choice(env)
    end = base._object_positions(base.elapsed_steps.long(), torch.arange(1))[0]
    assert end[0, 2] < 0  # the ball is hidden
    assert torch.allclose(end[1 + ball_cup, :2], base.CUP_SLOTS[int(base.ball_slot[0])])
    cup = ball_cup if right else (ball_cup + 1) % 3
    reward, terminated, info = _touch(env, 1 + cup)
    assert terminated and bool(info["success"][0]) == right and reward == (1.0 if right else -1.0)


@needs_maniskill
def test_shell_game_swaps_move_the_cups(make_state_env):
    env = make_state_env("memrl/TouchShellGameSwap-v0")
    base = env.unwrapped
    moved = 0
    for seed in range(10):
        env.reset(seed=seed)
        moved += int(base.ball_slot[0] != base.target[0])
        swaps = base.swaps[0]
        assert (swaps[:, 0] != swaps[:, 1]).all()  # every swap exchanges two different cups
        for step in range(5, base._choice_start + 1):
            cups = base._object_positions(torch.tensor([step]), torch.arange(1))[0, 1:, :2]
            apart = (cups[:, None] - cups[None]).abs().amax(-1) + 2 * torch.eye(3)
            assert (apart > 2 * base.CUP_HALF_SIZE[0]).all(), f"cups overlap at step {step}"
    assert 0 < moved < 10


@needs_maniskill
@pytest.mark.parametrize(
    ("env_id", "order", "success"),
    [
        ("memrl/TouchSeqOfColors3-v0", "reversed", True),
        ("memrl/TouchChainOfColors3-v0", "shown", True),
        ("memrl/TouchChainOfColors3-v0", "reversed", False),
        ("memrl/TouchSeqOfColors3-v0", "distractor", False),
    ],
)
def test_colour_sequences(make_state_env, env_id, order, success):
    env = make_state_env(env_id)
    env.reset(seed=4)
    base = env.unwrapped
    sequence = base.sequence[0].tolist()
    shown = [int(base._object_positions(torch.tensor([step]), torch.arange(1))[0, :, 2].argmax())
             for step in range(0, 15, 5)]
    assert shown == sequence  # one colour of the sequence at a time, in order
    _wait_for_choice(env)
    colours = {"shown": sequence, "reversed": sequence[::-1],
               "distractor": [next(c for c in range(9) if c not in sequence)]}[order]
    for index, colour in enumerate(colours):
        reward, terminated, info = _touch(env, colour)
        if terminated:
            break
        assert reward == 0
    assert index == (len(colours) - 1 if success else 0)  # success with the last touch, failure with the first
    assert terminated and bool(info["success"][0]) == success and bool(info["fail"][0]) != success
    assert reward == (1.0 if success else -1.0)


@needs_maniskill
def test_a_touched_cube_disappears(make_state_env):
    env = make_state_env("memrl/TouchSeqOfColors5-v0")
    env.reset(seed=5)
    base = env.unwrapped
    _wait_for_choice(env)
    first = int(base.sequence[0, 0])
    _touch(env, first)
    env.step(torch.zeros(1, 4))
    assert base._object_positions(base.elapsed_steps.long(), torch.arange(1))[0, first, 2] < 0
    assert int(base.collected[0].sum()) == 1


# -- the adapter on the CPU simulation, no renderer -------------------------------------------


@pytest.fixture(scope="module")
def state_adapter():
    if not HAS_MANISKILL:
        pytest.skip("needs mani-skill (pip install 'memrl[maniskill]')")
    env = make_maniskill_env("maniskill-touch-remember-color-3", num_envs=1, device="cpu", seed=7, observation="state")
    yield env
    env.close()


@needs_maniskill
def test_adapter_time_limit_auto_resets_in_the_same_step(state_adapter):
    env = state_adapter
    obs, info = env.reset()
    assert env.max_episode_steps == 60 and obs.dtype == torch.float32 and info["is_first"].tolist() == [True]
    assert env.single_observation_space.shape == (25,) and env.single_action_space.shape == (4,)
    for step in range(1, 61):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(1, 4))
        assert reward.tolist() == [0.0]
        if step < 60:
            assert not info["is_first"][0] and not info["episode_done"][0] and torch.equal(obs, info["final_obs"])
    assert truncated.tolist() == [True] and terminated.tolist() == [False] and info["is_first"].tolist() == [True]
    assert info["episode_length"].tolist() == [60] and info["success"].tolist() == [False]
    assert info["episode_return"].tolist() == [0.0]
    assert not torch.equal(obs, info["final_obs"])  # a new episode: the arm is back at its start
    assert int(env.base_env.elapsed_steps[0]) == 0


@needs_maniskill
def test_adapter_reports_success_and_the_episode_return(state_adapter):
    env = state_adapter
    env.reset(seed=8)
    base = env.base_env
    while int(base.elapsed_steps[0]) < base._choice_start:
        env.step(torch.zeros(1, 4))
    target = int(base.target[0])
    for steps in range(base._choice_start + 1, 60):
        position = base._object_positions(base.elapsed_steps.long(), torch.arange(1))[0, target]
        tcp = base.agent.tcp.pose.p[0]
        goal = position + torch.tensor([0.0, 0.0, base.CUBE_HALF_SIZE - 0.01])
        if (goal[:2] - tcp[:2]).norm() > 0.02:
            goal[2] += HOVER
        action = torch.cat([((goal - tcp) / 0.1).clamp(-1, 1), torch.tensor([-1.0])])[None]
        _, _, terminated, _, info = env.step(action)
        if info["episode_done"][0]:
            break
    assert terminated.tolist() == [True] and info["success"].tolist() == [True] and info["is_first"].tolist() == [True]
    assert info["episode_return"].tolist() == [1.0] and info["episode_length"].tolist() == [steps]


@needs_maniskill
def test_adapter_refuses_bad_input_in_one_sentence(state_adapter):
    with pytest.raises(ValueError, match="2 parallel envs need a CUDA device"):
        make_maniskill_env("maniskill-touch-remember-color-3", num_envs=2, device="cpu", observation="state")
    with pytest.raises(ValueError, match=r"observation must be one of rgb\+joints, rgb, state"):
        make_maniskill_env("maniskill-touch-remember-color-3", num_envs=1, device="cpu", observation="depth")
    with pytest.raises(ValueError, match=r"action must be a float tensor of shape \(1, 4\), got torch.int64 \(1,\)"):
        state_adapter.step(torch.zeros(1, dtype=torch.long))


# -- with a renderer: RGB observations; on CUDA: GPU-parallel simulation -----------------------


@needs_maniskill
def test_rgb_observations_show_the_cue_and_hide_the_answer(renderer):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = make_maniskill_env("maniskill-touch-remember-color-3", num_envs=1, device=device, seed=0, observation="rgb")
    obs, _ = env.reset()
    assert env.single_observation_space.shape == (64, 64, 3) and obs.shape == (1, 64, 64, 3)
    assert obs.dtype == torch.uint8 and obs.device == env.device
    base = env.base_env
    for _ in range(base._choice_start):
        obs, *_ = env.step(torch.zeros(1, 4, device=env.device))
    base.target[:] = (base.target + 1) % base.num_colors
    again = env._observation(base.get_obs())
    assert torch.equal(again, obs)  # the choice phase looks the same whatever the answer
    env.close()


def _cuda_env(name: str, num_envs: int):
    return make_maniskill_env(name, num_envs=num_envs, device="cuda", seed=0, observation="rgb")


@pytest.mark.cuda
@needs_maniskill
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["maniskill-touch-remember-color-9", "maniskill-touch-shell-game-swap",
                                  "maniskill-touch-seq-of-colors-5", "maniskill-touch-chain-of-colors-7"])
def test_every_family_renders_on_the_gpu(renderer, name):
    env = _cuda_env(name, 8)
    obs, info = env.reset()
    assert obs.shape == (8, 64, 64, 3) and obs.dtype == torch.uint8 and obs.is_cuda and info["is_first"].all()
    for _ in range(env.max_episode_steps):
        action = torch.rand(8, 4, device=env.device) * 2 - 1
        obs, reward, _, _, info = env.step(action)
        assert obs.is_cuda and reward.is_cuda and info["final_obs"].is_cuda and info["success"].is_cuda
    assert obs.float().std() > 0  # an image, not a blank buffer
    env.close()


@pytest.mark.cuda
@needs_maniskill
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_256_envs_step_on_the_gpu_and_every_episode_ends(renderer):
    env = _cuda_env("maniskill-touch-remember-color-3", 256)
    env.reset()
    ended = torch.zeros(256, dtype=torch.bool, device=env.device)
    for _ in range(env.max_episode_steps):
        obs, _, _, _, info = env.step(torch.rand(256, 4, device=env.device) * 2 - 1)
        ended |= info["episode_done"]
        assert obs.shape == (256, 64, 64, 3) and obs.is_cuda and info["episode_length"].is_cuda
    assert ended.all()  # within the time limit every env ended at least once, each resetting alone
    env.close()


@pytest.mark.cuda
@needs_maniskill
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_agent_runs_on_a_maniskill_task(renderer, tmp_path):
    result_code = train_main(["--env", "maniskill-remember-color-3", "--backbone", "gru", "--num-envs", "16",
                              "--total-steps", "1024", "--num-steps", "32", "--num-minibatches", "2",
                              "--eval-episodes", "4", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert result_code == 0 and (tmp_path / "run" / "eval.json").exists()
