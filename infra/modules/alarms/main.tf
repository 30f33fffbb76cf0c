# CloudWatch alarms for the AWS side of a chatty deployment, all notifying one SNS topic:
# the load balancer (5xx, target health), the ECS service (CPU, memory), RDS (CPU, storage)
# and ElastiCache (engine CPU, per node). Chatty's own signals (sends refused, bus reconnects,
# dependency health) are Prometheus alerts: grafana/alerts.yml.

data "aws_caller_identity" "current" {}

locals {
  # The services that publish to the topic, in its key policy and its topic policy alike.
  alarm_publishers = ["cloudwatch.amazonaws.com", "aps.amazonaws.com"]
}

# The topic is encrypted with a key of our own: CloudWatch alarms and Amazon Managed
# Prometheus' alert manager cannot publish to a topic under the AWS-managed SNS key (its policy
# cannot name them), so this key's policy lets exactly those two services, for this account,
# use it.
data "aws_iam_policy_document" "topic_key" {
  statement {
    sid       = "Account"
    actions   = ["kms:*"]
    resources = ["*"] # a key policy's resource is the key itself
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "AlarmPublishers"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = local.alarm_publishers
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key" "topic" {
  description         = "${var.name}: encrypts the alarms SNS topic"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.topic_key.json
  tags                = var.tags
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.topic.arn
  tags              = var.tags
}

# Who may publish: CloudWatch alarms and the Prometheus workspace's alert manager of this
# account (infra/modules/prometheus), nobody else.
data "aws_iam_policy_document" "topic" {
  statement {
    sid       = "AlarmPublishers"
    actions   = ["sns:Publish", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.alarms.arn]
    principals {
      type        = "Service"
      identifiers = local.alarm_publishers
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.topic.json
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  alb    = { LoadBalancer = var.alb_arn_suffix }
  target = { LoadBalancer = var.alb_arn_suffix, TargetGroup = var.target_group_arn_suffix }
  ecs    = { ClusterName = var.ecs_cluster_name, ServiceName = var.ecs_service_name }
  rds    = { DBInstanceIdentifier = var.rds_instance_id }

  # name => what to watch. `periods` one-minute periods (five for ECS/RDS) must all breach.
  alarms = {
    alb-5xx = {
      description = "The ALB answered 5xx itself: no healthy target, or targets timing out."
      namespace   = "AWS/ApplicationELB", metric = "HTTPCode_ELB_5XX_Count", statistic = "Sum"
      dimensions  = local.alb, comparison = "GreaterThanThreshold", threshold = var.elb_5xx_per_minute
      period      = 60, periods = 3, missing = "notBreaching"
    }
    target-5xx = {
      description = "Chatty's tasks answer 5xx (API errors, upgrades refused as unavailable)."
      namespace   = "AWS/ApplicationELB", metric = "HTTPCode_Target_5XX_Count", statistic = "Sum"
      dimensions  = local.target, comparison = "GreaterThanThreshold", threshold = var.target_5xx_per_minute
      period      = 60, periods = 3, missing = "notBreaching"
    }
    unhealthy-targets = {
      description = "A task fails the /readyz health check (or is draining for longer than expected)."
      namespace   = "AWS/ApplicationELB", metric = "UnHealthyHostCount", statistic = "Maximum"
      dimensions  = local.target, comparison = "GreaterThanThreshold", threshold = 0
      period      = 60, periods = 5, missing = "notBreaching"
    }
    no-healthy-target = {
      description = "No task is healthy: the service is down."
      namespace   = "AWS/ApplicationELB", metric = "HealthyHostCount", statistic = "Minimum"
      dimensions  = local.target, comparison = "LessThanThreshold", threshold = 1
      period      = 60, periods = 2, missing = "breaching"
    }
    ecs-cpu = {
      description = "The service's tasks run hot: autoscaling is at its maximum or too slow."
      namespace   = "AWS/ECS", metric = "CPUUtilization", statistic = "Average"
      dimensions  = local.ecs, comparison = "GreaterThanThreshold", threshold = var.cpu_percent
      period      = 60, periods = 10, missing = "missing"
    }
    ecs-memory = {
      description = "The service's tasks are near their memory limit (idle sockets cost ~22 KiB each)."
      namespace   = "AWS/ECS", metric = "MemoryUtilization", statistic = "Average"
      dimensions  = local.ecs, comparison = "GreaterThanThreshold", threshold = var.memory_percent
      period      = 60, periods = 10, missing = "missing"
    }
    rds-cpu = {
      description = "PostgreSQL runs hot: commits will slow down and sends queue up."
      namespace   = "AWS/RDS", metric = "CPUUtilization", statistic = "Average"
      dimensions  = local.rds, comparison = "GreaterThanThreshold", threshold = var.cpu_percent
      period      = 60, periods = 10, missing = "missing"
    }
    rds-free-storage = {
      description = "PostgreSQL is running out of storage: once full, every send is refused."
      namespace   = "AWS/RDS", metric = "FreeStorageSpace", statistic = "Minimum"
      dimensions  = local.rds, comparison = "LessThanThreshold", threshold = var.rds_free_storage_bytes
      period      = 300, periods = 1, missing = "missing"
    }
  }

  redis_nodes = [for i in range(var.redis_node_count) : format("%s-%03d", var.redis_replication_group_id, i + 1)]
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = local.alarms

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  statistic           = each.value.statistic
  dimensions          = each.value.dimensions
  comparison_operator = each.value.comparison
  threshold           = each.value.threshold
  period              = each.value.period
  evaluation_periods  = each.value.periods
  treat_missing_data  = each.value.missing
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "redis_cpu" {
  for_each = toset(local.redis_nodes)

  alarm_name          = "${var.name}-redis-cpu-${each.key}"
  alarm_description   = "Redis (${each.key}) engine CPU is high: bus and presence slow down for every node."
  namespace           = "AWS/ElastiCache"
  metric_name         = "EngineCPUUtilization"
  statistic           = "Average"
  dimensions          = { CacheClusterId = each.key }
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.cpu_percent
  period              = 60
  evaluation_periods  = 10
  treat_missing_data  = "missing"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}
