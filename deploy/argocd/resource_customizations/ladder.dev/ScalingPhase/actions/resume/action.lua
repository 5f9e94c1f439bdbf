-- spec.paused = false: the operator acts again. If Git says paused, the
-- next sync pauses it again: resume in Git.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.paused = false
return obj
