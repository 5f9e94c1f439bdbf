-- Argo CD health of a ladder.dev ScalingPhase.
--
-- Read from the status the operator writes (it writes nothing else), most
-- urgent first:
--   Degraded     Degraded=True, or TransitionBlocked=True for any reason but
--                ApprovalRequired (a failed migration or verification, a
--                target that never gets ready, stale volumes, over budget,
--                flap budget exhausted): the condition's message is shown.
--   Suspended    waiting for a person: TransitionBlocked=True with reason
--                ApprovalRequired, or spec.paused.
--   Progressing  no status yet, a status for an older generation, a
--                transition under way (status.transition.step is not Done),
--                or children not ready (Ready is not True).
--   Healthy      Ready=True for the current generation.
-- Tested by deploy/argocd/health_test.go (health_test.yaml and objects read
-- from a real apiserver).
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  local text = fallback
  if c.message ~= nil and c.message ~= "" then
    text = c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. text
  end
  return text
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end

local blocked = condition("TransitionBlocked")
if blocked ~= nil and blocked.status == "True" and blocked.reason ~= "ApprovalRequired" then
  hs.status = "Degraded"
  hs.message = describe(blocked, "Transition blocked")
  return hs
end

local transition = obj.status.transition
if blocked ~= nil and blocked.status == "True" then
  hs.status = "Suspended"
  local what = "the transition"
  if transition ~= nil and transition.from ~= nil and transition.to ~= nil then
    what = "phase " .. transition["from"] .. " to " .. transition.to
  end
  hs.message = "Waiting for approval of " .. what ..
    " (Argo CD action approve-transition, or kubectl ladder approve)"
  if blocked.message ~= nil and blocked.message ~= "" then
    hs.message = hs.message .. ": " .. blocked.message
  end
  return hs
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "Paused (spec.paused): the operator changes nothing until it is resumed"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

if transition ~= nil and transition.step ~= nil and transition.step ~= "Done" then
  hs.status = "Progressing"
  hs.message = "Phase " .. tostring(transition["from"]) .. " to " .. tostring(transition.to) ..
    ": " .. transition.step
  if transition.message ~= nil and transition.message ~= "" then
    hs.message = hs.message .. " (" .. transition.message .. ")"
  end
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to observe generation " .. generation
    return hs
  end
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready, "Children not ready")
else
  hs.message = "Children not ready"
end
return hs
