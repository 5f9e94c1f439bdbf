-- The actions Argo CD offers on a ScalingPhase, enabled only when they
-- mean something:
--   approve-transition  while the operator waits for approval
--                       (TransitionBlocked=True, reason ApprovalRequired);
--   pause / resume      by spec.paused. Argo CD writes it to the live object:
--                       with auto-sync and self-heal on, Git wins it back on
--                       the next sync, so a pause that must last belongs in
--                       Git (set spec.paused there).
local actions = {}
local paused = obj.spec ~= nil and obj.spec.paused == true
local waiting = false
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "TransitionBlocked" and c.status == "True" and c.reason == "ApprovalRequired" then
      waiting = true
    end
  end
end
actions["approve-transition"] = {["disabled"] = not waiting}
actions["pause"] = {["disabled"] = paused}
actions["resume"] = {["disabled"] = not paused}
return actions
