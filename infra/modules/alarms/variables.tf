variable "name" {
  description = "Name prefix for the SNS topic and the alarms."
  type        = string
}

variable "alarm_email" {
  description = "Address subscribed to the alarm topic (it must confirm the subscription); empty for none."
  type        = string
  default     = ""
}

variable "alb_arn_suffix" {
  description = "ARN suffix of the ALB (the LoadBalancer dimension of AWS/ApplicationELB)."
  type        = string
}

variable "target_group_arn_suffix" {
  description = "ARN suffix of the app's target group (the TargetGroup dimension)."
  type        = string
}

variable "ecs_cluster_name" {
  description = "ECS cluster of the service (the ClusterName dimension of AWS/ECS)."
  type        = string
}

variable "ecs_service_name" {
  description = "ECS service running chatty (the ServiceName dimension of AWS/ECS)."
  type        = string
}

variable "rds_instance_id" {
  description = "RDS instance identifier (the DBInstanceIdentifier dimension of AWS/RDS)."
  type        = string
}

variable "redis_replication_group_id" {
  description = "ElastiCache replication group id; its nodes are <id>-001, <id>-002, ..."
  type        = string
}

variable "redis_node_count" {
  description = "Nodes in the replication group (num_cache_clusters)."
  type        = number
}

variable "elb_5xx_per_minute" {
  description = "ALB-generated 5xx responses per minute that raise the alarm (no healthy target, timeouts)."
  type        = number
  default     = 10
}

variable "target_5xx_per_minute" {
  description = "5xx responses per minute from the tasks that raise the alarm."
  type        = number
  default     = 10
}

variable "cpu_percent" {
  description = "Average CPU (ECS service, RDS, Redis engine) above which an alarm is raised, in percent."
  type        = number
  default     = 80
}

variable "memory_percent" {
  description = "Average memory of the ECS service above which an alarm is raised, in percent."
  type        = number
  default     = 85
}

variable "rds_free_storage_bytes" {
  description = "Free RDS storage below which an alarm is raised, in bytes."
  type        = number
  default     = 5368709120
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
