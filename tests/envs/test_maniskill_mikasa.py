"""MIKASA-Robo's tasks (envs.maniskill.mikasa) on the CPU simulation without a renderer (obs_mode="state",
robot `panda`): spaces and lengths, the phases (what is on the table when), the success rule (a
teleported object reaches it; the wrong object does not, and is no failure either), and the dense
reward's bounds. The numbers the tests expect are MIKASA-Robo's (its task files)."""

from __future__ import annotations

import importlib.util
import math

import gymnasium
import pytest
import torch

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mani_skill") is None,
                       reason="needs mani-skill (pip install 'memrl[maniskill]')"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Failed to find system libvulkan:UserWarning"),
]

ON_TABLE = 0.5
"""An object whose centre is below this height (m) is in play; out of play is 1000 m up."""


@pytest.fixture(scope="module")
def make_env():
    """gymnasium.make on the CPU simulation without a renderer; one env per id for the whole module
    (each test resets it with its own seed), since building and closing one takes about half a second."""
    import envs.maniskill.mikasa  # noqa: F401

    made = {}

    def make(env_id: str):
        if env_id not in made:
            made[env_id] = gymnasium.make(env_id, num_envs=1, obs_mode="state", render_backend="none",
                                          sim_backend="physx_cpu", robot_uids="panda")
        return made[env_id]

    yield make
    for env in made.values():
        env.close()


def _hold(env, steps: int = 1):
    """Zero joint deltas (the arm holds still) for `steps` steps -> the last step's results."""
    for _ in range(steps):
        result = env.step(torch.zeros(1, 8))
    return result


def _heights(base) -> list[float]:
    return [float(actor.pose.p[0, 2]) for actor in base.objects]


def _teleport(actor, position: torch.Tensor, heading: float = 0.0) -> None:
    """Put `actor` at `position`, turned by `heading` about z, at rest."""
    state = actor.get_state()
    state[:, :3] = position
    state[:, 3:7] = torch.tensor([math.cos(heading / 2), 0.0, 0.0, math.sin(heading / 2)])
    state[:, 7:] = 0.0
    actor.set_state(state)


@pytest.mark.parametrize(("env_id", "length", "state_dim"), [
    ("memrl/RememberColor3-v0", 60, 35), ("memrl/RememberColor5-v0", 60, 41), ("memrl/RememberColor9-v0", 60, 53),
    ("memrl/RememberShape3-v0", 60, 35), ("memrl/RememberShape5-v0", 60, 41), ("memrl/RememberShape9-v0", 60, 53),
    ("memrl/RememberShapeAndColor3x2-v0", 60, 45), ("memrl/RememberShapeAndColor3x3-v0", 60, 54),
    ("memrl/RememberShapeAndColor5x3-v0", 60, 72),
    ("memrl/ShellGameTouch-v0", 90, 40), ("memrl/ShellGamePush-v0", 90, 43), ("memrl/ShellGamePick-v0", 90, 44),
    ("memrl/BunchOfColors3-v0", 120, 85), ("memrl/SeqOfColors3-v0", 120, 85), ("memrl/ChainOfColors7-v0", 120, 89),
    ("memrl/InterceptSlow-v0", 90, 50), ("memrl/InterceptGrabSlow-v0", 90, 49),
    ("memrl/RotateLenientPos-v0", 90, 34), ("memrl/RotateStrictPos-v0", 90, 34), ("memrl/TakeItBack-v0", 180, 39),
])
def test_lengths_spaces_and_defaults_are_mikasas(make_env, env_id, length, state_dim):
    from mani_skill.utils.registration import REGISTERED_ENVS

    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    base = env.unwrapped
    assert REGISTERED_ENVS[env_id].max_episode_steps == length
    assert base.control_mode == "pd_joint_delta_pos" and env.action_space.shape == (8,)
    assert base.reward_mode == "normalized_dense"
    # joint positions 9, velocities 9, TCP pose 7, then the task's objects and oracle_info, as MIKASA-Robo's state
    assert obs.shape == (1, state_dim)


@pytest.mark.parametrize("env_id", ["memrl/RememberColor3-v0", "memrl/RememberShape5-v0",
                                    "memrl/RememberShapeAndColor3x2-v0"])
def test_remember_shows_the_target_alone_then_nothing_then_everything(make_env, env_id):
    env = make_env(env_id)
    env.reset(seed=1)
    base = env.unwrapped
    target, count = int(base.target[0]), len(base.objects)
    for step in range(13):
        heights = _heights(base)
        on_table = [index for index in range(count) if heights[index] < ON_TABLE]
        if step < 5:
            assert on_table == [target], f"step {step}"
            assert base.objects[target].pose.p[0, :2].abs().max() < 1e-3  # at the centre
        elif step < 10:
            assert on_table == [], f"step {step}"
        else:
            assert on_table == list(range(count)), f"step {step}"
        _hold(env)
    places = torch.stack([actor.pose.p[0, :2] for actor in base.objects])
    assert torch.cdist(places, places).add(torch.eye(count)).min() > 0.05  # apart from one another


@pytest.mark.parametrize("right", [True, False], ids=["target", "distractor"])
def test_remember_succeeds_near_the_shown_object_only(make_env, right):
    env = make_env("memrl/RememberColor5-v0")
    env.reset(seed=2)
    base = env.unwrapped
    _hold(env, 11)
    target = int(base.target[0])
    chosen = target if right else (target + 1) % 5
    _teleport(base.objects[chosen], base.agent.tcp.pose.p - torch.tensor([0.0, 0.0, 0.03]))
    _, reward, terminated, truncated, info = _hold(env)
    assert bool(info["success"][0]) is right and bool(terminated[0]) is right and not truncated[0]
    if right:
        assert float(reward[0]) == 1.0  # success is the normalised maximum
    else:
        assert 0.0 <= float(reward[0]) < 0.7  # the wrong object is no failure: the episode goes on
        _hold(env, 5)
        assert int(base.elapsed_steps[0]) == 17


def test_remember_needs_a_still_arm(make_env):
    env = make_env("memrl/RememberColor3-v0")
    env.reset(seed=3)
    base = env.unwrapped
    _hold(env, 11)
    action = torch.zeros(1, 8)
    action[0, 0] = 1.0  # the first joint turns at full speed
    env.step(action)
    target = base.objects[int(base.target[0])]
    _teleport(target, base.agent.tcp.pose.p - torch.tensor([0.0, 0.0, 0.03]))
    info = base.evaluate()
    assert bool(info["is_obj_placed"][0]) and not info["is_robot_static"][0] and not info["success"][0]


@pytest.mark.parametrize("env_id", ["memrl/RememberColor9-v0", "memrl/ShellGameTouch-v0", "memrl/ShellGamePush-v0",
                                    "memrl/ShellGamePick-v0", "memrl/InterceptSlow-v0", "memrl/InterceptGrabSlow-v0",
                                    "memrl/RotateLenientPos-v0", "memrl/RotateStrictPos-v0", "memrl/TakeItBack-v0"])
def test_the_normalised_dense_reward_stays_in_0_1(make_env, env_id):
    env = make_env(env_id)
    env.reset(seed=4)
    generator = torch.Generator().manual_seed(0)
    rewards = []
    for _ in range(40):
        _, reward, terminated, truncated, _ = env.step(torch.rand(1, 8, generator=generator) * 2 - 1)
        rewards.append(float(reward[0]))
        assert not terminated[0] and not truncated[0]
    assert min(rewards) >= 0.0 and max(rewards) <= 1.0 and max(rewards) > 0.0


def test_shell_game_shows_the_ball_then_covers_every_place_with_a_cup(make_env):
    env = make_env("memrl/ShellGameTouch-v0")
    env.reset(seed=5)
    base = env.unwrapped
    ball_xy = base.ball.pose.p[0, :2].clone()
    for step in range(8):
        cup_heights = [float(cup.pose.p[0, 2]) for cup in base.cups]
        if step < 5:
            assert min(cup_heights) > ON_TABLE, f"step {step}"
        else:
            assert max(cup_heights) < ON_TABLE, f"step {step}"
        assert float(base.ball.pose.p[0, 2]) < ON_TABLE
        _hold(env)
    cups_xy = torch.stack([cup.pose.p[0, :2] for cup in base.cups])
    assert torch.allclose(cups_xy[int(base.target[0])], ball_xy, atol=1e-3)  # the ball's cup covers it
    gaps = cups_xy[1:] - cups_xy[:-1]
    assert torch.allclose(gaps, torch.tensor([[0.0, 0.2], [0.0, 0.2]]), atol=1e-3)


@pytest.mark.parametrize("right", [True, False], ids=["ball-cup", "empty-cup"])
def test_shell_game_touch_succeeds_at_the_ball_cup_only(make_env, right):
    env = make_env("memrl/ShellGameTouch-v0")
    env.reset(seed=6)
    base = env.unwrapped
    _hold(env, 6)
    target = int(base.target[0])
    cup = base.cups[target if right else (target + 1) % 3]
    _teleport(cup, base.agent.tcp.pose.p - torch.tensor([0.0, 0.0, 0.05]))
    _, reward, terminated, _, info = _hold(env)
    assert bool(info["success"][0]) is right and bool(terminated[0]) is right
    assert (float(reward[0]) == 1.0) is right


@pytest.mark.parametrize("mode", ["push", "pick"])
def test_shell_game_push_and_pick_succeed_with_the_ball_cup_at_the_goal(make_env, mode):
    env = make_env(f"memrl/ShellGame{mode.capitalize()}-v0")
    env.reset(seed=7)
    base = env.unwrapped
    goal = base.goal_position()[0]
    expected_offset = {"push": [0.1, 0.0, 0.025], "pick": [0.0, 0.0, 0.125]}[mode]
    assert torch.allclose(goal - base.ball_place()[0], torch.tensor(expected_offset))
    _hold(env, 6)
    target = int(base.target[0])
    wrong = base.cups[(target + 1) % 3]
    _teleport(wrong, goal)
    _, _, terminated, _, info = _hold(env)
    assert not info["success"][0] and not terminated[0]
    _teleport(wrong, goal + torch.tensor([0.0, 0.5, 0.0]))
    _teleport(base.cups[target], goal)
    _, reward, terminated, _, info = _hold(env)
    assert info["success"][0] and terminated[0] and float(reward[0]) == 1.0



@pytest.mark.parametrize(("env_id", "choice_start"), [("memrl/BunchOfColors3-v0", 10), ("memrl/SeqOfColors3-v0", 20),
                                                      ("memrl/ChainOfColors7-v0", 40)])
def test_colour_sets_show_their_colours_then_nothing_then_all_nine(make_env, env_id, choice_start):
    env = make_env(env_id)
    env.reset(seed=8)
    base = env.unwrapped
    sequence = base.sequence[0].tolist()
    bunch = "Bunch" in env_id
    for step in range(choice_start + 2):
        heights = _heights(base)
        on_table = sorted(index for index in range(9) if heights[index] < ON_TABLE)
        if step < (5 if bunch else 5 * len(sequence)):
            assert on_table == (sorted(sequence) if bunch else [sequence[step // 5]]), f"step {step}"
        elif step < choice_start:
            assert on_table == [], f"step {step}"
        else:
            assert on_table == list(range(9)), f"step {step}"
        _hold(env)


def _touch_in_turn(env, cubes: list[int]):
    """Bring each cube in turn under the TCP for one step (a touch), then back to the table; -> last step's results."""
    base = env.unwrapped
    for cube in cubes:
        actor = base.objects[cube]
        place = actor.pose.p.clone()
        _teleport(actor, base.agent.tcp.pose.p - torch.tensor([0.0, 0.0, base.TOUCH_HEIGHT]))
        result = _hold(env)
        assert bool(base.touched[0, cube]), f"cube {cube} was not touched"
        _teleport(actor, place)
        if result[2][0]:
            return result
    return result


@pytest.mark.parametrize(("env_id", "order", "succeeds"), [
    ("memrl/SeqOfColors3-v0", "reversed", True), ("memrl/BunchOfColors3-v0", "shown", True),
    ("memrl/ChainOfColors7-v0", "shown", True), ("memrl/ChainOfColors7-v0", "reversed", False),
    ("memrl/SeqOfColors3-v0", "with-a-distractor", False),
])
def test_colour_sets_succeed_on_exactly_the_shown_cubes(make_env, env_id, order, succeeds):
    env = make_env(env_id)
    env.reset(seed=9)
    base = env.unwrapped
    _hold(env, base.choice_start + 1)
    sequence = base.sequence[0].tolist()
    distractor = next(cube for cube in range(9) if cube not in sequence)
    cubes = {"shown": sequence, "reversed": sequence[::-1], "with-a-distractor": [distractor, *sequence]}[order]
    _, reward, terminated, truncated, info = _touch_in_turn(env, cubes)
    assert bool(info["success"][0]) is succeeds and bool(terminated[0]) is succeeds and not truncated[0]
    if succeeds:
        assert float(reward[0]) == 1.0
    else:
        # (90 x right touches / K - 10 x wrong touches) / 100, plus at most 1.5 / 100 for reaching and a still arm.
        # ChainOfColors reversed: only the middle cube is in its place; SeqOfColors: the distractor is wrong.
        if "Chain" in env_id:
            right = sum(cube == shown for cube, shown in zip(cubes, sequence))
        else:
            right = sum(cube in sequence for cube in cubes)
        touch_part = (90 * right / len(sequence) - 10 * (len(cubes) - right)) / 100
        assert touch_part <= float(reward[0]) <= touch_part + 0.015


@pytest.mark.parametrize(("speed", "low", "high"), [("Slow", 0.25, 0.5), ("Medium", 0.5, 0.75), ("Fast", 0.75, 1.0)])
def test_intercept_rolls_the_ball_at_the_levels_speed(make_env, speed, low, high):
    env = make_env(f"memrl/Intercept{speed}-v0")
    env.reset(seed=10)
    base = env.unwrapped
    velocity = base.initial_velocity[0]
    assert low <= float(velocity[1]) <= high and 0.0 <= float(velocity[0]) <= 0.05
    start = base.ball.pose.p[0].clone()
    assert -0.35 <= float(start[0]) <= -0.05 and -0.9 <= float(start[1]) <= -0.65
    goal = base.goal[0]
    assert torch.isclose(goal[0], start[0] + 0.2) and -0.2 <= float(goal[1]) <= 0.2
    _hold(env, 4)
    travelled = float(base.ball.pose.p[0, 1] - start[1])
    assert 0.5 * low * 0.2 < travelled < high * 0.2  # 4 steps of 0.05 s, rolling friction slows it down


@pytest.mark.parametrize("inside", [True, False], ids=["in-the-target", "beside-it"])
def test_intercept_succeeds_when_the_ball_is_in_the_target(make_env, inside):
    env = make_env("memrl/InterceptMedium-v0")
    env.reset(seed=11)
    base = env.unwrapped
    _hold(env, 2)
    place = base.goal[0] + torch.tensor([0.06 if inside else 0.14, 0.0, 0.02])
    _teleport(base.ball, place)
    _, reward, terminated, _, info = _hold(env)
    assert bool(info["success"][0]) is inside and bool(terminated[0]) is inside
    assert (float(reward[0]) == 1.0) is inside


def test_intercept_grab_needs_the_ball_grasped_with_a_still_arm(make_env):
    env = make_env("memrl/InterceptGrabSlow-v0")
    env.reset(seed=12)
    base = env.unwrapped
    _hold(env, 2)
    _teleport(base.ball, base.agent.tcp.pose.p)  # between the open fingers: not grasped
    _, _, terminated, _, info = _hold(env)
    assert not info["is_ball_grasped"][0] and not info["success"][0] and not terminated[0]
    close = torch.zeros(1, 8)
    close[0, 7] = -1.0
    for step in range(14):
        if step < 4:  # hold the ball still between the fingers while they close on it
            _teleport(base.ball, base.agent.tcp.pose.p)
        _, reward, terminated, _, info = env.step(close)
        if terminated[0]:
            break
    assert info["is_ball_grasped"][0] and info["success"][0] and terminated[0] and float(reward[0]) == 1.0


@pytest.mark.parametrize("negative", [False, True], ids=["Pos", "PosNeg"])
def test_rotate_targets_follow_the_levels_ranges_and_are_in_the_observation(make_env, negative):
    env = make_env(f"memrl/RotateLenientPos{'Neg' if negative else ''}-v0")
    targets = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        target = float(env.unwrapped.target_angle[0])
        assert float(obs[0, -1]) == target  # the prompt closes the state vector
        targets.append(target)
    magnitudes = [abs(target) for target in targets]
    assert min(magnitudes) >= 0.1 and max(magnitudes) <= (math.pi / 4 if negative else math.pi / 2)
    if negative:
        # one draw gives sign and size: positive targets are the larger half of the range
        split = 0.1 + 0.5 * (math.pi / 4 - 0.1)
        assert all((target > 0) == (abs(target) > split) for target in targets)
        assert min(targets) < 0 < max(targets)


@pytest.mark.parametrize(("strict", "turn_error", "shift", "succeeds"), [
    (False, 0.0, 0.0, True), (False, 0.15, 0.0, False), (False, 0.0, 0.08, True),
    (True, 0.0, 0.0, True), (True, 0.0, 0.08, False),
], ids=["lenient-turned", "lenient-turned-too-little", "lenient-moved", "strict-turned", "strict-moved"])
def test_rotate_succeeds_when_the_peg_is_turned_by_the_target(make_env, strict, turn_error, shift, succeeds):
    env = make_env(f"memrl/Rotate{'Strict' if strict else 'Lenient'}Pos-v0")
    env.reset(seed=13)
    base = env.unwrapped
    _hold(env, 6)
    heading = float(base.initial_heading[0] + base.target_angle[0]) - turn_error
    _teleport(base.peg, base.initial_position[0] + torch.tensor([shift, 0.0, 0.0]), heading)
    _, reward, terminated, _, info = _hold(env)
    assert bool(info["success"][0]) is succeeds and bool(terminated[0]) is succeeds
    assert (float(reward[0]) == 1.0) is succeeds


def test_take_it_back_needs_the_goal_visited_before_the_way_back(make_env):
    env = make_env("memrl/TakeItBack-v0")
    env.reset(seed=14)
    base = env.unwrapped
    start, goal = base.start[0].clone(), base.goal[0].clone()
    assert -0.05 <= float(start[0]) <= 0.05 and 0.2 <= float(goal[0]) <= 0.25
    assert any(lane - 1e-6 <= float(start[1]) <= lane + 0.05 for lane in (-0.1, 0.0, 0.1))
    _, _, terminated, _, info = _hold(env, 2)
    assert not info["success"][0]  # on its start, but the goal was never visited
    _teleport(base.cube, goal + torch.tensor([0.0, 0.0, 0.02]))
    _, _, terminated, _, info = _hold(env)
    assert info["goal_reached_status"][0] and not info["success"][0] and not terminated[0]
    _teleport(base.cube, start + torch.tensor([0.03, 0.0, 0.02]))
    _, reward, terminated, _, info = _hold(env)
    assert info["success"][0] and terminated[0] and float(reward[0]) == 1.0


def test_the_adapter_runs_a_mikasa_task_on_state_without_a_renderer():
    from envs.maniskill import make_maniskill_env

    env = make_maniskill_env("maniskill-shell-game-touch", num_envs=1, device="cpu", seed=0, observation="state")
    obs, info = env.reset()
    assert env.max_episode_steps == 90 and obs.shape == (1, 40) and env.single_action_space.shape == (8,)
    assert env.base_env.robot_uids == "panda"
    for step in range(90):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(1, 8))
    assert truncated.tolist() == [True] and info["episode_length"].tolist() == [90]
    assert 0.0 < float(info["episode_return"][0]) < 90.0
    env.close()


# -- with a renderer (a Vulkan-capable GPU): the memory-test observation ------------------------


def _renderer():
    from envs.maniskill.adapter import renderer_available

    if not renderer_available():
        pytest.skip("needs a Vulkan-capable GPU (ManiSkill renderer)")


def test_rgb_joints_gives_both_cameras_and_the_joints_and_hides_the_answer():
    _renderer()
    from envs.maniskill import make_maniskill_env

    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = make_maniskill_env("maniskill-remember-color-3", num_envs=1, device=device, seed=0)
    obs, _ = env.reset()
    assert sorted(obs) == ["base_camera", "hand_camera", "joints"]
    assert obs["base_camera"].shape == (1, 128, 128, 3) and obs["hand_camera"].shape == (1, 128, 128, 3)
    assert obs["base_camera"].dtype == torch.uint8 and obs["joints"].shape == (1, 25)
    base = env.base_env
    shown = obs["base_camera"].clone()
    for _ in range(base.choice_start + 1):
        obs, *_ = env.step(torch.zeros(1, 8, device=env.device))
    assert not torch.equal(shown, obs["base_camera"])  # the cue is gone, the choice is on the table
    base.target[:] = (base.target + 1) % 3
    again = env._observation(base.get_obs())
    assert torch.equal(again["base_camera"], obs["base_camera"])  # the choice looks the same whatever the answer
    env.close()


def test_rotate_gives_its_target_angle_as_prompt():
    _renderer()
    from envs.maniskill import make_maniskill_env

    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = make_maniskill_env("maniskill-rotate-lenient-pos", num_envs=1, device=device, seed=0)
    obs, _ = env.reset()
    assert sorted(obs) == ["base_camera", "hand_camera", "joints", "prompt"]
    assert float(obs["prompt"][0, 0]) == float(env.base_env.target_angle[0])
    env.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["maniskill-remember-shape-and-color-5x3", "maniskill-shell-game-pick",
                                  "maniskill-chain-of-colors-7", "maniskill-intercept-grab-fast",
                                  "maniskill-rotate-strict-pos-neg", "maniskill-take-it-back"])
def test_every_mikasa_family_runs_on_the_gpu(name):
    _renderer()
    from envs.maniskill import make_maniskill_env

    env = make_maniskill_env(name, num_envs=8, device="cuda", seed=0)
    obs, info = env.reset()
    assert obs["base_camera"].shape == (8, 128, 128, 3) and obs["base_camera"].is_cuda and info["is_first"].all()
    ended = torch.zeros(8, dtype=torch.bool, device=env.device)
    for _ in range(env.max_episode_steps):
        obs, reward, _, _, info = env.step(torch.rand(8, 8, device=env.device) * 2 - 1)
        assert obs["joints"].is_cuda and reward.is_cuda and info["final_obs"]["hand_camera"].is_cuda
        assert ((reward >= -1.0) & (reward <= 1.0)).all()
        ended |= info["episode_done"]
    assert ended.all() and obs["hand_camera"].float().std() > 0
    env.close()


def test_the_side_by_side_script_refuses_a_folder_that_is_not_mikasa_robo(tmp_path, capsys):
    from scripts.compare_mikasa import main as compare_main

    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--mikasa", str(tmp_path)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "is not a MIKASA-Robo checkout" in stderr and len(stderr.strip().splitlines()) == 1


def test_the_adapter_auto_resets_dict_observations_key_by_key():
    """The rgb+joints path without a renderer: the state vector split into a dict stands in for the images."""
    from envs.maniskill.adapter import ManiSkillBatchedEnv

    class SplitState(ManiSkillBatchedEnv):
        def _observation(self, raw):
            return {"joints": raw[:, :25], "task": raw[:, 25:]}

    env = SplitState("memrl/RememberColor3-v0", num_envs=1, device="cpu", seed=0, observation="state")
    assert list(env.single_observation_space) == ["joints", "task"]
    assert env.single_observation_space["task"].shape == (10,)
    obs, info = env.reset()
    first_task = obs["task"].clone()
    for _ in range(60):
        obs, _, _, truncated, info = env.step(torch.zeros(1, 8))
    assert truncated.tolist() == [True] and info["is_first"].tolist() == [True]
    assert sorted(info["final_obs"]) == ["joints", "task"]
    assert not torch.equal(info["final_obs"]["joints"], obs["joints"])  # the new episode's arm, not the old one's
    assert obs["task"][0, 0] == float(env.base_env.target[0])  # oracle_info of the new episode
    assert first_task.shape == obs["task"].shape
    env.close()
